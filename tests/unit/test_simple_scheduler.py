"""SimpleScheduler: filters with reasons, memory fit, biggest partition on the fastest node."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from ml_scheduler.graph import ModelGraph, analyze_model
from ml_scheduler.simple import (
    REASON_INSUFFICIENT_MEMORY,
    REASON_NOT_SELECTED,
    REASON_OFFLINE,
    PlacementResult,
    SimpleScheduler,
    reason_code,
)
from ml_scheduler.snapshot import ClusterSnapshot, NodeView
from model_zoo.tiny import tiny_dag_model

MIB = 1024 * 1024
# tiny model, weights per balanced partition (bytes): k=2 [3]: 3232 | 1660;
# k=3 [2, 3]: 896 | 2336 | 1660 with FLOPs 114,688 | 296,960 | 171,178.


def node(node_id: str, speed: float, online: bool = True, mem_bytes: float | None = None) -> NodeView:
    return NodeView(node_id=node_id, name=f"name-{node_id}", profile="server", online=online,
                    speed_factor=speed,
                    memory_limit_mb=None if mem_bytes is None else mem_bytes / MIB, arch="x86_64",
                    accelerators=(), battery_percent=None, labels=())


@pytest.fixture(scope="module")
def tiny_graph() -> ModelGraph:
    return analyze_model(tiny_dag_model())


def codes(result: PlacementResult) -> dict[str, str]:
    return {node_id: reason_code(reason) for node_id, reason in result.reasons.items()}


CASES = [
    pytest.param(
        [node("slow", 1), node("mid", 2), node("fast", 4)], 3,
        True, [2, 3], ["slow", "fast", "mid"], {}, id="biggest-partition-on-fastest-node"),
    pytest.param(
        [node("slow", 1), node("mid", 2), node("fast", 4, online=False)], 3,
        True, [3], ["mid", "slow"], {"fast": REASON_OFFLINE}, id="offline-filtered-with-reason"),
    pytest.param(
        [node("slow", 1), node("mid", 2), node("fast", 4)], 1,
        True, [], ["fast"], {"slow": REASON_NOT_SELECTED, "mid": REASON_NOT_SELECTED}, id="single-partition"),
    pytest.param(
        [node("slow", 1), node("mid", 2), node("fast", 4, mem_bytes=800)], 3,
        True, [3], ["mid", "slow"], {"fast": REASON_INSUFFICIENT_MEMORY}, id="node-too-small-for-any-part"),
    pytest.param(
        [node("slow", 1), node("mid", 2), node("fast", 4, mem_bytes=1000)], 3,
        True, [2, 3], ["fast", "mid", "slow"], {}, id="fastest-takes-biggest-part-it-can-hold"),
    pytest.param(
        [node("a", 1, mem_bytes=800), node("b", 2, mem_bytes=800)], 2,
        False, [], [], {"a": REASON_INSUFFICIENT_MEMORY, "b": REASON_INSUFFICIENT_MEMORY}, id="nothing-fits"),
    pytest.param(
        [node("a", 1, online=False), node("b", 2, online=False)], 2,
        False, [], [], {"a": REASON_OFFLINE, "b": REASON_OFFLINE}, id="all-offline"),
    pytest.param(
        [node("b", 2), node("a", 2)], 1,
        True, [], ["a"], {"b": REASON_NOT_SELECTED}, id="speed-tie-broken-by-node-id"),
    pytest.param(
        [node("a", 1, mem_bytes=2000), node("b", 2, mem_bytes=2000)], 2,
        False, [], [], {"a": REASON_NOT_SELECTED, "b": REASON_NOT_SELECTED},
        id="parts-fit-nodes-but-not-all"),
]


@pytest.mark.parametrize(
    ("nodes", "max_partitions", "schedulable", "positions", "node_ids", "reason_codes"), CASES
)
def test_place_table(
    tiny_graph, nodes, max_partitions, schedulable, positions, node_ids, reason_codes
) -> None:
    result = SimpleScheduler().place(tiny_graph, ClusterSnapshot(tuple(nodes)), max_partitions)
    assert result.schedulable is schedulable
    assert result.positions == positions
    assert result.node_ids == node_ids
    assert codes(result) == reason_codes
    assert result.strategy == "flops-balanced"
    assert bool(result.message) is (not schedulable)


def test_memory_limits_hold_and_plan_is_deterministic(tiny_graph) -> None:
    nodes = (node("n1", 3, mem_bytes=2400), node("n2", 1, mem_bytes=4000), node("n3", 2, mem_bytes=1000))
    snapshot = ClusterSnapshot(nodes)
    result = SimpleScheduler().place(tiny_graph, snapshot, 3)
    assert result == SimpleScheduler().place(tiny_graph, snapshot, 3)
    assert result.schedulable and len(result.node_ids) == 3 and len(set(result.node_ids)) == 3
    for (start, end), node_id in zip(tiny_graph.ranges(result.positions), result.node_ids):
        limit = snapshot.by_id(node_id).memory_limit_mb
        assert tiny_graph.range_param_bytes(start, end) <= limit * MIB


def test_matching_fallback_when_greedy_strands_a_partition() -> None:
    # Part 0: 131,072 FLOPs but 1 KiB of weights; part 1: 32,768 FLOPs but 64 KiB of weights.
    inits = [numpy_helper.from_array(np.ones((16, 16), np.float32), "w1"),
             numpy_helper.from_array(np.array([1, 4096], np.int64), "shape"),
             numpy_helper.from_array(np.ones((4096, 4), np.float32), "w2")]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["a"]),
             helper.make_node("Reshape", ["a", "shape"], ["r"]),
             helper.make_node("MatMul", ["r", "w2"], ["y"])]
    model = helper.make_model(
        helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [256, 16])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], initializer=inits),
        opset_imports=[helper.make_opsetid("", 17)])
    graph = analyze_model(model)
    snapshot = ClusterSnapshot((node("fast", 2, mem_bytes=MIB), node("slow", 1, mem_bytes=10_000)))
    result = SimpleScheduler().place(graph, snapshot, 2)
    assert result.schedulable
    assert result.positions == [1]
    assert result.node_ids == ["slow", "fast"]  # greedy (big part -> fast) would strand part 1


def test_memory_factor_scales_the_requirement(tiny_graph) -> None:
    snapshot = ClusterSnapshot((node("only", 1, mem_bytes=5000),))
    assert SimpleScheduler().place(tiny_graph, snapshot, 1).schedulable
    result = SimpleScheduler(memory_factor=2.0).place(tiny_graph, snapshot, 1)
    assert not result.schedulable
    assert codes(result) == {"only": REASON_INSUFFICIENT_MEMORY}


def test_invalid_max_partitions(tiny_graph) -> None:
    with pytest.raises(ValueError):
        SimpleScheduler().place(tiny_graph, ClusterSnapshot((node("a", 1),)), 0)


def test_more_nodes_than_ops_caps_k() -> None:
    model = helper.make_model(
        helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])]),
        opset_imports=[helper.make_opsetid("", 17)])
    result = SimpleScheduler().place(analyze_model(model), ClusterSnapshot((node("a", 1), node("b", 2))), 4)
    assert result.schedulable and result.positions == [] and result.node_ids == ["b"]


def test_snapshot_and_views_are_frozen() -> None:
    view = node("a", 1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        view.online = False  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        ClusterSnapshot((view,)).nodes = ()  # type: ignore[misc]
