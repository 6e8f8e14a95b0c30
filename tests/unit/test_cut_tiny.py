"""Cuts of the tiny DAG: every position and every k chain to the whole model; constants duplicated."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from ml_scheduler.extract import extract_partitions
from ml_scheduler.graph import analyze_model
from ml_scheduler.partition import balanced_cuts
from model_zoo.tiny import example_input, tiny_dag_model
from treeline_test_helpers import ort_run, reversed_node_order

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def tiny():
    model = tiny_dag_model(seed=0)
    graph = analyze_model(model)
    x = example_input(7)
    whole = ort_run(model.SerializeToString(), {"input": x}, ("output",))["output"]
    return model, graph, x, whole


def _chain(parts, x):
    values = {"input": x}
    for part in parts:
        values = ort_run(part.model_bytes, {n: values[n] for n in part.inputs}, part.outputs)
    return values["output"]


def test_every_single_cut(tiny) -> None:
    model, graph, x, whole = tiny
    assert len(graph.cut_positions()) == 12
    for p in graph.cut_positions():
        parts = extract_partitions(model, graph, [p])
        np.testing.assert_allclose(_chain(parts, x), whole, atol=1e-5, rtol=0, err_msg=f"cut {p}")


@pytest.mark.parametrize("k", [1, 2, 3, 5, 13])
def test_balanced_k_way_split(tiny, k: int) -> None:
    model, graph, x, whole = tiny
    positions = balanced_cuts(graph, k)
    parts = extract_partitions(model, graph, positions)
    assert len(parts) == k
    assert parts[0].inputs == ("input",) and parts[-1].outputs == ("output",)
    for before, after in zip(parts, parts[1:]):
        assert before.outputs == after.inputs
    assert sum(part.flops for part in parts) == graph.total_flops
    assert parts[-1].cut_bytes == 0
    np.testing.assert_allclose(_chain(parts, x), whole, atol=1e-5, rtol=0)


def test_constant_nodes_are_duplicated_not_shipped(tiny) -> None:
    model, graph, _, _ = tiny
    # Cut right after the residual Add: the Constant nodes (defined first) feed ops after it.
    p = [op.name for op in graph.ops].index("residual_add") + 1
    first, second = extract_partitions(model, graph, [p])
    assert first.outputs == ("res",)
    second_proto = onnx.load_from_string(second.model_bytes)
    first_proto = onnx.load_from_string(first.model_bytes)
    constants = {n.name for n in second_proto.graph.node if n.op_type == "Constant"}
    assert constants == {"scale_const", "shape_const"}
    assert not any(n.op_type == "Constant" for n in first_proto.graph.node)
    # Each part keeps only the initializers its ops read.
    assert {i.name for i in first_proto.graph.initializer} == {"conv0.w", "conv0.b", "conv1.w", "conv1.b"}
    assert {i.name for i in second_proto.graph.initializer} == {"branch_a.w", "branch_b.w", "fc.w", "fc.b"}
    assert first.param_bytes + second.param_bytes == graph.param_bytes


def test_pass_through_tensor_is_input_and_output_of_the_middle_part(tiny) -> None:
    model, graph, x, whole = tiny
    names = [op.name for op in graph.ops]
    # Parts: [conv0, relu0] [conv1] [relu1, add, ...]: "a" skips over the middle part.
    positions = [names.index("relu0") + 1, names.index("conv1") + 1]
    parts = extract_partitions(model, graph, positions)
    assert parts[1].inputs == ("a",)
    assert parts[1].outputs == ("a", "conv1")
    np.testing.assert_allclose(_chain(parts, x), whole, atol=1e-5, rtol=0)


def test_extraction_is_deterministic(tiny) -> None:
    model, graph, _, _ = tiny
    first = [part.sha256 for part in extract_partitions(model, graph, [4, 9])]
    fresh = tiny_dag_model(seed=0)
    again = [part.sha256 for part in extract_partitions(fresh, analyze_model(fresh), [4, 9])]
    assert first == again


@pytest.mark.parametrize("positions", [[0], [13], [5, 5], [7, 3]])
def test_invalid_positions_rejected(tiny, positions: list[int]) -> None:
    model, graph, _, _ = tiny
    with pytest.raises(ValueError):
        extract_partitions(model, graph, positions)


def test_model_mismatch_rejected(tiny) -> None:
    model, graph, _, _ = tiny
    other = onnx.ModelProto()
    other.CopyFrom(model)
    del other.graph.node[-1]
    with pytest.raises(ValueError, match="not analysed from this model"):
        extract_partitions(other, graph, [3])


def test_unsorted_source_model_still_extracts(tiny) -> None:
    model, _, x, whole = tiny
    shuffled = reversed_node_order(model)
    graph = analyze_model(shuffled)
    parts = extract_partitions(shuffled, graph, balanced_cuts(graph, 4))
    np.testing.assert_allclose(_chain(parts, x), whole, atol=1e-5, rtol=0)
