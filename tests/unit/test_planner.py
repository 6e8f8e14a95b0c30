"""The exact planners against brute force, evaluate and their own invariants."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from benchmarks.instances import random_problem
from ml_scheduler.planner import plan, plan_with, tables_for
from ml_scheduler.planner.brute_force import brute_force
from ml_scheduler.problem import PlanningProblem, evaluate

REL = 1e-9


def _instance(seed: int, objective: str, n_types: bool = False) -> PlanningProblem:
    rng = np.random.default_rng(seed)
    n, m = int(rng.integers(1, 8)), int(rng.integers(1, 5))
    types = int(rng.integers(1, m + 1)) if n_types else None
    return random_problem(rng, n, m, types, objective, with_memory=bool(rng.random() < 0.8),
                          with_source=bool(rng.random() < 0.7))


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= REL * max(abs(a), abs(b), 1.0)


def _check_against_brute_force(problem: PlanningProblem) -> None:
    expected = brute_force(problem)
    got = plan(problem)
    assert (got is None) == (expected is None)
    if got is None or expected is None:
        return
    assert _close(got.cost, expected.cost), (got, expected)
    again = evaluate(problem, got.positions, got.devices)
    assert again is not None and again.cost == got.cost
    assert len(got.stages) <= problem.max_partitions
    assert len(set(got.devices)) == len(got.devices)
    for stage in got.stages:
        assert stage.memory_bytes <= problem.mem_bytes[stage.device]
    if problem.first_device is not None:
        assert got.devices[0] == problem.first_device
    assert plan(problem) == got  # deterministic


@pytest.mark.parametrize("objective", ["latency", "throughput"])
@settings(max_examples=250, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_dp_matches_brute_force(objective: str, seed: int) -> None:
    _check_against_brute_force(_instance(seed, objective))


@pytest.mark.parametrize("objective", ["latency", "throughput"])
@settings(max_examples=100, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_class_dp_equals_subset_dp(objective: str, seed: int) -> None:
    problem = _instance(seed, objective, n_types=True)
    by_subsets, by_classes = plan_with(problem, False), plan_with(problem, True)
    assert (by_subsets is None) == (by_classes is None)
    if by_subsets is not None and by_classes is not None:
        assert _close(by_subsets.cost, by_classes.cost)
    _check_against_brute_force(problem)


@pytest.mark.parametrize("objective", ["latency", "throughput"])
def test_class_dp_equals_subset_dp_on_larger_instances(objective: str) -> None:
    for seed in range(6):
        rng = np.random.default_rng(seed)
        problem = random_problem(rng, 40, 7, 3, objective, max_partitions=int(rng.integers(2, 8)))
        assert len(tables_for(problem, True).members) < 7
        a, b = plan_with(problem, False), plan_with(problem, True)
        assert (a is None) == (b is None)
        if a is not None and b is not None:
            assert _close(a.cost, b.cost)


def _two_device(**overrides: object) -> PlanningProblem:
    base = dict(
        op_ms=np.array([[1.0, 1.0, 1.0, 1.0], [0.1, 0.1, 0.1, 0.1]]),
        param_bytes=np.zeros(4), live_bytes=np.ones(4), cut_bytes=np.array([1000.0, 10, 10, 10, 10]),
        mem_bytes=np.array([np.inf, np.inf]), rtt_ms=np.full((2, 2), 1.0), bandwidth=np.full((2, 2), 100.0),
        device_ids=("edge", "cloud"), source=0, sink=None, max_partitions=2,
    )
    base.update(overrides)
    return PlanningProblem(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("overrides", "devices", "positions", "cost"),
    [
        # Every cut is 1000 B at 100 B/ms: shipping costs 11 ms, more than running on the edge.
        ({"cut_bytes": np.full(5, 1000.0)}, [0], [], 4.0),
        # Cheap input: all on the cloud, 1 + 0.1 * 4.
        ({"cut_bytes": np.array([0.0, 10, 10, 10, 10])}, [1], [], 1.4),
        # Pinned to the edge, small cut after op 0: edge runs op 0, cloud the rest.
        ({"cut_bytes": np.array([0.0, 1, 10, 10, 10]), "first_device": 0}, [0, 1], [1], 1.0 + 1.01 + 0.3),
        # Single partition forced by max_partitions, pinned to the edge.
        ({"first_device": 0, "max_partitions": 1}, [0], [], 4.0),
        # Edge cannot hold it; the cloud can.
        ({"mem_bytes": np.array([0.5, np.inf]), "cut_bytes": np.zeros(5)}, [1], [], 1.4),
        # Nothing holds it: infeasible.
        ({"mem_bytes": np.array([0.5, 0.5])}, None, None, None),
        # Throughput: bottleneck of [edge 0:1][cloud 1:4] = max(1, 1 + 0.1, 0.3) = 1.1 vs 4 alone.
        ({"objective": "throughput", "first_device": 0, "cut_bytes": np.array([0.0, 10, 10, 10, 10])},
         [0, 1], [1], 1.1),
    ],
)
def test_table(overrides: dict, devices: list[int] | None, positions: list[int] | None,
               cost: float | None) -> None:
    problem = _two_device(**overrides)
    got = plan(problem)
    if devices is None:
        assert got is None and brute_force(problem) is None
        return
    assert got is not None
    assert got.devices == devices and got.positions == positions
    assert got.cost == pytest.approx(cost)


def test_ties_prefer_fewer_stages_then_lower_devices() -> None:
    problem = _two_device(op_ms=np.ones((2, 4)), cut_bytes=np.zeros(5), rtt_ms=np.zeros((2, 2)), source=None)
    got = plan(problem)
    assert got is not None and got.devices == [0] and got.positions == []


def test_ops_a_device_cannot_run_are_avoided() -> None:
    op_ms = np.array([[1.0, np.inf, 1.0, 1.0], [5.0, 5.0, 5.0, 5.0]])
    problem = _two_device(op_ms=op_ms, cut_bytes=np.zeros(5), rtt_ms=np.zeros((2, 2)), source=None)
    got = plan(problem)
    assert got is not None and np.isfinite(got.latency_ms)
    assert got.cost == pytest.approx(brute_force(problem).cost)  # type: ignore[union-attr]


def test_zero_partitions_is_infeasible_and_unknown_objective_raises() -> None:
    assert plan(_two_device(max_partitions=0)) is None
    with pytest.raises(ValueError, match="objective"):
        plan(_two_device(objective="energy"))


def test_plan_notes_name_the_variant() -> None:
    got = plan(_two_device())
    assert got is not None and got.notes == ("planner=dp-subsets",)
    assert dataclasses.replace(got, notes=()).notes == ()
