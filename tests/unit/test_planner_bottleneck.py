"""The bottleneck DP's guessed limits (relaxation + viability pruning) change nothing.

``dp.solve`` for throughput runs the DP under increasing guessed limits and keeps only cells that
can lie on a plan within the limit; the result must equal the plain, unlimited DP's exactly
(cost, devices and cuts, ties included), also when hops bind so that the first guesses fail.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from benchmarks.instances import random_problem
from ml_scheduler.planner import dp, tables_for
from ml_scheduler.planner.windows import window_minmax


def _both(problem, use_classes, monkeypatch):  # type: ignore[no-untyped-def]
    tables = tables_for(problem, use_classes)
    fast = dp.solve(tables, "throughput")
    with monkeypatch.context() as patch:
        patch.setattr(dp, "_limits", lambda engine: [np.inf])
        plain = dp.solve(tables, "throughput")
    return fast, plain


@settings(max_examples=120, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), hop_scale=st.sampled_from([1.0, 30.0, 1000.0]))
def test_limited_bottleneck_dp_equals_plain_dp(seed: int, hop_scale: float) -> None:
    monkeypatch = pytest.MonkeyPatch()
    rng = np.random.default_rng(seed)
    n, m = int(rng.integers(1, 60)), int(rng.integers(1, 9))
    types = int(rng.integers(1, m + 1)) if rng.random() < 0.6 else None
    problem = random_problem(rng, n, m, types, "throughput",
                             max_partitions=int(rng.integers(1, m + 1)) if rng.random() < 0.5 else m)
    problem = dataclasses.replace(problem, cut_bytes=problem.cut_bytes * hop_scale)
    for use_classes in (False, True):
        fast, plain = _both(problem, use_classes, monkeypatch)
        assert fast == plain


def test_limited_bottleneck_dp_on_benchmark_scale(monkeypatch: pytest.MonkeyPatch) -> None:
    for seed in range(2):
        rng = np.random.default_rng([1000, seed])
        problem = random_problem(rng, 300, 10, 3, "throughput", max_partitions=10, shape="chain",
                                 with_pin=False, with_inf=False)
        fast, plain = _both(problem, None, monkeypatch)
        assert fast == plain


@settings(max_examples=100, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_window_minmax_mask(seed: int) -> None:
    rng = np.random.default_rng(seed)
    rows, cols = int(rng.integers(1, 4)), int(rng.integers(1, 40))
    a = rng.choice([0.0, 1.0, 2.5, 7.0, np.inf], size=(rows, cols))
    p = np.concatenate([[0.0], np.cumsum(rng.choice([0.0, 0.5, 1.0, 3.0], size=cols - 1))])
    starts = np.minimum(np.maximum.accumulate(rng.integers(0, cols, cols)), np.arange(cols))
    mask = rng.random((rows, cols)) < 0.5
    full, masked = window_minmax(a, p, starts), window_minmax(a, p, starts, mask=mask)
    assert np.array_equal(masked, np.where(mask, full, np.inf))


@settings(max_examples=100, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_memory_starts_match_the_range_matrix(seed: int) -> None:
    from ml_scheduler.planner.tables import memory_starts, range_memory_matrix

    rng = np.random.default_rng(seed)
    problem = random_problem(rng, int(rng.integers(1, 40)), int(rng.integers(1, 5)))
    limits = np.concatenate([problem.mem_bytes, [0.0, np.inf, float(problem.live_bytes.max())]])
    want = (range_memory_matrix(problem)[None] > limits[:, None, None]).sum(axis=1)
    assert np.array_equal(memory_starts(problem, limits), want)
