"""balanced_cuts / min_max_split: optimal against brute force, tie-breaks, edge cases."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from ml_scheduler.graph import analyze_model
from ml_scheduler.partition import balanced_cuts, min_max_split, optimal_bottleneck
from model_zoo.synthetic import random_dag_model
from model_zoo.tiny import tiny_dag_model


def _runs(flops: list[int], positions: list[int]) -> list[int]:
    bounds = [0, *positions, len(flops)]
    return [sum(flops[a:b]) for a, b in zip(bounds, bounds[1:])]


def _brute(flops: list[int], costs: list[int], k: int) -> tuple[int, int]:
    """(best bottleneck, least total cut cost at that bottleneck) by enumeration."""
    best: tuple[int, int] | None = None
    for positions in itertools.combinations(range(1, len(flops)), k - 1):
        key = (max(_runs(flops, list(positions))), sum(costs[p] for p in positions))
        best = key if best is None or key < best else best
    assert best is not None
    return best


@settings(max_examples=200, deadline=None)
@given(flops=st.lists(st.integers(0, 50), min_size=1, max_size=9), data=st.data())
def test_min_max_split_is_optimal(flops: list[int], data: st.DataObject) -> None:
    k = data.draw(st.integers(1, len(flops)), label="k")
    size = len(flops) + 1
    costs = data.draw(st.lists(st.integers(0, 20), min_size=size, max_size=size), label="costs")
    positions = min_max_split(flops, costs, k)
    assert len(positions) == k - 1
    assert positions == sorted(set(positions)) and all(1 <= p < len(flops) for p in positions)
    assert (max(_runs(flops, positions)), sum(costs[p] for p in positions)) == _brute(flops, costs, k)


@pytest.mark.parametrize(
    ("flops", "costs", "k", "expected"),
    [
        ([10, 10, 10, 10], [0] * 5, 2, [2]),
        ([10, 10, 10, 10], [0] * 5, 4, [1, 2, 3]),
        ([100, 1, 1, 1], [0] * 5, 2, [1]),
        ([1, 1, 1, 100], [0] * 5, 2, [3]),  # the last run must stay within 100
        ([1, 1, 0, 1, 1], [0] * 6, 2, [2]),  # equal balance at 2 and 3, equal cost: earliest
        ([5, 0, 0, 5], [0, 9, 1, 9, 0], 2, [2]),  # equal balance at 1, 2, 3: the cheapest cut wins
        ([5, 0, 0, 5], [0, 1, 9, 9, 0], 2, [1]),
        ([7], [0, 0], 1, []),
    ],
)
def test_min_max_split_table(flops, costs, k, expected) -> None:
    assert min_max_split(flops, costs, k) == expected


@pytest.mark.parametrize("k", [0, -1, 5])
def test_min_max_split_rejects_bad_k(k: int) -> None:
    with pytest.raises(ValueError):
        min_max_split([1, 2, 3, 4], [0] * 5, k)


def test_min_max_split_rejects_negative_flops_and_bad_costs() -> None:
    with pytest.raises(ValueError):
        min_max_split([1, -2], [0, 0, 0], 2)
    with pytest.raises(ValueError):
        min_max_split([1, 2], [0, 0], 2)


def test_balanced_cuts_on_tiny_model() -> None:
    graph = analyze_model(tiny_dag_model())
    assert balanced_cuts(graph, 1) == []
    two = balanced_cuts(graph, 2)
    runs = [graph.range_flops(a, b) for a, b in graph.ranges(two)]
    assert max(runs) == optimal_bottleneck(graph, 2)
    # conv0+relu0+conv1 (411,648) vs the rest (171,178): the only split below 468,138.
    assert two == [3] and runs == [411_648, 171_178]
    assert len(balanced_cuts(graph, len(graph.ops))) == len(graph.ops) - 1
    with pytest.raises(ValueError):
        balanced_cuts(graph, len(graph.ops) + 1)


def test_balanced_cuts_prefers_the_cheaper_equal_cut() -> None:
    # MatMul -> [1,128] -> Slice (0 FLOPs) -> [1,64] -> MatMul: cutting before or after the Slice
    # balances equally; after it ships half the bytes, so that cut must win over the earlier one.
    inits = [numpy_helper.from_array(np.ones((64, 128), np.float32), "w1"),
             numpy_helper.from_array(np.ones((64, 128), np.float32), "w2"),
             numpy_helper.from_array(np.array([0], np.int64), "starts"),
             numpy_helper.from_array(np.array([64], np.int64), "ends"),
             numpy_helper.from_array(np.array([1], np.int64), "axes")]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["a"]),
             helper.make_node("Slice", ["a", "starts", "ends", "axes"], ["s"]),
             helper.make_node("MatMul", ["s", "w2"], ["y"])]
    model = helper.make_model(
        helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 128])],
                          initializer=inits),
        opset_imports=[helper.make_opsetid("", 17)])
    graph = analyze_model(model)
    assert [graph.cut_bytes(p) for p in (1, 2)] == [512, 256]
    assert graph.range_flops(0, 1) == graph.range_flops(0, 2) == graph.range_flops(2, 3)
    assert balanced_cuts(graph, 2) == [2]


def test_balanced_cuts_scale() -> None:
    graph = analyze_model(random_dag_model(1000, seed=5))
    positions = balanced_cuts(graph, 8)
    runs = [graph.range_flops(a, b) for a, b in graph.ranges(positions)]
    assert len(runs) == 8
    assert max(runs) == optimal_bottleneck(graph, 8)
    assert max(runs) <= graph.total_flops / 8 + max(op.flops for op in graph.ops)
