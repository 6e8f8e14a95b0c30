"""DADS min-cut against exhaustive downsets and the two-device prefix DP.

Relationship checked: the prefix DP (planner over a fixed topological order) may only put a
*prefix* on the edge; min-cut may put any downward-closed set there. So min-cut <= prefix DP
always, with equality on chains and whenever the min-cut's edge set is itself a prefix.
"""

from __future__ import annotations

from itertools import product

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from ml_scheduler.graph import ModelGraph, analyze_model
from ml_scheduler.planner import plan
from ml_scheduler.planner.mincut import _consumers, dads_min_cut, split_latency
from ml_scheduler.problem import PlanningProblem
from model_zoo.synthetic import random_dag_model


def _setup(seed: int, n_ops: int, skip_prob: float) -> tuple[ModelGraph, np.ndarray, np.ndarray, float, float]:
    rng = np.random.default_rng(seed)
    graph = analyze_model(random_dag_model(n_ops, seed=seed, skip_prob=skip_prob, extra_output=False))
    n = len(graph.ops)
    edge_ms = rng.uniform(0.5, 3.0, n)
    cloud_ms = edge_ms * rng.uniform(0.05, 0.5, n)
    return graph, edge_ms, cloud_ms, float(rng.uniform(5.0, 200.0)), float(rng.uniform(0.0, 5.0))


def _downward_closed(graph: ModelGraph, edge: set[int]) -> bool:
    return all(prod < 0 or prod in edge or not any(r in edge for r in readers)
               for prod, readers in _consumers(graph).values())


def _prefix_problem(graph: ModelGraph, edge_ms: np.ndarray, cloud_ms: np.ndarray, bw: float,
                    rtt: float) -> PlanningProblem:
    """Two devices, input on the edge, answer leg free, cloud -> edge made prohibitive."""
    n = len(graph.ops)
    cut = np.array([graph.cut_bytes(p) for p in range(n)] + [0.0], dtype=float)
    return PlanningProblem(
        op_ms=np.stack([edge_ms, cloud_ms]), param_bytes=np.zeros(n), live_bytes=np.zeros(n),
        cut_bytes=cut, mem_bytes=np.array([np.inf, np.inf]),
        rtt_ms=np.array([[0.0, rtt], [1e12, 0.0]]), bandwidth=np.full((2, 2), bw),
        device_ids=("edge", "cloud"), source=0, sink=None, max_partitions=2,
    )


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n_ops=st.integers(1, 9))
def test_min_cut_is_optimal_over_all_downsets(seed: int, n_ops: int) -> None:
    graph, edge_ms, cloud_ms, bw, rtt = _setup(seed, n_ops, 0.5)
    n = len(graph.ops)
    if n > 12:
        return
    latency, edge = dads_min_cut(graph, edge_ms, cloud_ms, bw, rtt)
    assert _downward_closed(graph, set(edge))
    assert np.isclose(latency, split_latency(graph, set(edge), edge_ms, cloud_ms, bw, rtt))
    best = min(split_latency(graph, s, edge_ms, cloud_ms, bw, rtt)
               for bits in product([0, 1], repeat=n)
               if _downward_closed(graph, s := {i for i in range(n) if bits[i]}))
    assert np.isclose(latency, best, rtol=1e-9)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n_ops=st.integers(1, 30), skip=st.sampled_from([0.0, 0.5]))
def test_min_cut_versus_prefix_dp(seed: int, n_ops: int, skip: float) -> None:
    graph, edge_ms, cloud_ms, bw, rtt = _setup(seed, n_ops, skip)
    latency, edge = dads_min_cut(graph, edge_ms, cloud_ms, bw, rtt)
    dp = plan(_prefix_problem(graph, edge_ms, cloud_ms, bw, rtt))
    assert dp is not None
    assert latency <= dp.latency_ms * (1 + 1e-9) + 1e-9
    if edge == list(range(len(edge))):  # a prefix of the topological order: the DP can express it
        assert np.isclose(latency, dp.latency_ms, rtol=1e-9)


def test_input_in_the_cloud_runs_everything_there() -> None:
    graph, edge_ms, cloud_ms, bw, rtt = _setup(3, 8, 0.3)
    latency, edge = dads_min_cut(graph, edge_ms * 0.0, cloud_ms, bw, rtt, input_on_edge=False)
    assert edge == [] and np.isclose(latency, cloud_ms.sum())
