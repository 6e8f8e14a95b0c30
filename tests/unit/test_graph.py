"""analyze_model: order, FLOPs, bytes and cut sets, checked against hand counts and brute force."""

from __future__ import annotations

import time

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from ml_scheduler.graph import analyze_model
from model_zoo.synthetic import random_dag_model
from model_zoo.tiny import tiny_dag_model
from treeline_test_helpers import onnx_model as _model
from treeline_test_helpers import reversed_node_order


def _vi(name: str, shape: list[int], dtype: int = TensorProto.FLOAT) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, dtype, shape)


def _brute_cut_set(model: onnx.ModelProto, graph, p: int) -> set[str]:
    """The contract's definition, evaluated naively."""
    before = {o for op in graph.ops[:p] for o in op.outputs} | set(graph.input_names)
    after = {i for op in graph.ops[p:] for i in op.inputs}
    return {t for t in before if t in after or t in graph.output_names} - graph.static_tensors


def test_tiny_model_ops_and_costs() -> None:
    graph = analyze_model(tiny_dag_model())
    assert len(graph.ops) == 13  # 15 nodes minus 2 Constant nodes
    assert [op.name for op in graph.ops][:3] == ["conv0", "relu0", "conv1"]
    conv0 = graph.ops[0]
    # 2 * (8*16*16 outputs) * (3*3*3 MACs each) + bias adds
    assert conv0.flops == 2 * 8 * 16 * 16 * 27 + 8 * 16 * 16
    assert conv0.param_bytes == (8 * 3 * 3 * 3 + 8) * 4
    assert conv0.output_bytes == 8 * 16 * 16 * 4
    by_name = {op.name: op for op in graph.ops}
    assert by_name["maxpool"].flops == 8 * 8 * 8 * 4
    assert by_name["concat"].flops == 0
    assert by_name["fc"].flops == 2 * 10 * 8 + 10
    assert by_name["scale_mul"].param_bytes == 4  # the Constant node's scalar counts as a parameter
    assert by_name["flatten"].param_bytes == 16
    init_bytes = sum(np.prod(i.dims) * 4 for i in tiny_dag_model().graph.initializer)
    assert graph.param_bytes == init_bytes + 4 + 16
    assert graph.total_flops == sum(op.flops for op in graph.ops)
    assert graph.input_names == ("input",) and graph.output_names == ("output",)


def test_tiny_cut_sets() -> None:
    model = tiny_dag_model()
    graph = analyze_model(model)
    names = [op.name for op in graph.ops]
    residual = names.index("residual_add")
    assert graph.cut_set(residual) == ("a", "b")  # skip tensor + branch output
    assert graph.cut_bytes(residual) == 2 * 8 * 16 * 16 * 4
    assert graph.cut_set(names.index("concat")) == ("c1", "c2")
    static = {i.name for i in model.graph.initializer} | {"scale", "flat_shape"}
    assert graph.static_tensors == static
    for p in graph.cut_positions():
        assert set(graph.cut_set(p)) == _brute_cut_set(model, graph, p)
        assert not set(graph.cut_set(p)) & static
        assert graph.cut_bytes(p) == sum(graph.tensor_bytes[t] for t in graph.cut_set(p))
    assert graph.cut_set(0) == ("input",) and graph.cut_set(len(graph.ops)) == ("output",)
    with pytest.raises(ValueError):
        graph.cut_set(len(graph.ops) + 1)


def test_depthwise_conv_flops_use_groups() -> None:
    weight = numpy_helper.from_array(np.ones((8, 1, 3, 3), np.float32), "w")
    node = helper.make_node("Conv", ["x", "w"], ["y"], group=8, pads=[1, 1, 1, 1], strides=[2, 2])
    graph = analyze_model(_model([node], [_vi("x", [1, 8, 10, 10])], [_vi("y", [1, 8, 5, 5])], [weight]))
    assert graph.ops[0].flops == 2 * (8 * 5 * 5) * 9


def test_matmul_gemm_and_dtype_sizes() -> None:
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["m"]),
        helper.make_node("Gemm", ["m", "g"], ["y"], transB=1),
        helper.make_node("Cast", ["y"], ["h"], to=TensorProto.FLOAT16),
        helper.make_node("Cast", ["h"], ["i"], to=TensorProto.INT64),
    ]
    inits = [numpy_helper.from_array(np.ones((6, 5), np.float32), "w"),
             numpy_helper.from_array(np.ones((7, 5), np.float32), "g")]
    graph = analyze_model(_model(nodes, [_vi("x", [4, 6])], [_vi("i", [4, 7], TensorProto.INT64)], inits))
    assert [op.flops for op in graph.ops] == [2 * 4 * 5 * 6, 2 * 4 * 7 * 5, 0, 0]
    assert [op.output_bytes for op in graph.ops] == [4 * 5 * 4, 4 * 7 * 4, 4 * 7 * 2, 4 * 7 * 8]


def test_symbolic_batch_dimension_counts_as_one() -> None:
    node = helper.make_node("Relu", ["x"], ["y"])
    graph = analyze_model(_model([node], [_vi("x", ["batch", 3])], [_vi("y", ["batch", 3])]))
    assert graph.cut_bytes(0) == 12 and graph.ops[0].output_bytes == 12


def test_unsorted_nodes_are_ordered_topologically_and_deterministically() -> None:
    model = tiny_dag_model()
    shuffled = reversed_node_order(model)
    graph = analyze_model(shuffled)
    produced = {"input"} | graph.static_tensors
    for op in graph.ops:
        assert set(i for i in op.inputs if i) <= produced, op.name
        produced.update(op.outputs)
    assert [op.name for op in analyze_model(shuffled).ops] == [op.name for op in graph.ops]
    assert graph.total_flops == analyze_model(model).total_flops


def test_cycle_is_rejected() -> None:
    nodes = [helper.make_node("Add", ["x", "b"], ["a"]), helper.make_node("Relu", ["a"], ["b"])]
    with pytest.raises(ValueError, match="cycle"):
        analyze_model(_model(nodes, [_vi("x", [2])], [_vi("b", [2])]))


def test_identity_of_weight_is_static_and_early_output_crosses_cuts() -> None:
    nodes = [
        helper.make_node("Identity", ["w"], ["w_copy"], name="idw"),
        helper.make_node("Relu", ["x"], ["early"], name="r0"),
        helper.make_node("Mul", ["early", "w_copy"], ["m"], name="m"),
        helper.make_node("Tanh", ["m"], ["y"], name="t"),
    ]
    inits = [numpy_helper.from_array(np.ones((3,), np.float32), "w")]
    graph = analyze_model(_model(nodes, [_vi("x", [3])], [_vi("y", [3]), _vi("early", [3])], inits))
    assert [op.name for op in graph.ops] == ["r0", "m", "t"]
    assert "w_copy" in graph.static_tensors
    assert graph.cut_set(2) == ("early", "m")  # a graph output produced before the cut
    assert graph.ops[1].param_bytes == 12


@settings(max_examples=40, deadline=None)
@given(n_ops=st.integers(1, 40), seed=st.integers(0, 10_000), skip=st.sampled_from([0.0, 0.3, 0.8]))
def test_cut_sets_match_brute_force_on_random_dags(n_ops: int, seed: int, skip: float) -> None:
    model = random_dag_model(n_ops, seed=seed, skip_prob=skip)
    graph = analyze_model(model)
    constants = sum(node.op_type == "Constant" for node in model.graph.node)
    assert len(graph.ops) == len(model.graph.node) - constants
    for p in range(len(graph.ops) + 1):
        cut = graph.cut_set(p)
        assert len(cut) == len(set(cut))
        assert set(cut) == _brute_cut_set(model, graph, p)
        assert graph.cut_bytes(p) == 32 * len(cut)


def test_thousand_op_graph_is_analysed_quickly() -> None:
    model = random_dag_model(1000, seed=3)
    start = time.perf_counter()
    graph = analyze_model(model)
    for p in graph.cut_positions():
        graph.cut_bytes(p)
    elapsed = time.perf_counter() - start
    assert len(graph.ops) >= 1000
    assert elapsed < 2.0, elapsed


def test_ml_scheduler_imports_neither_onnxruntime_nor_torch() -> None:
    import subprocess
    import sys

    code = ("import sys, ml_scheduler.graph, ml_scheduler.partition, ml_scheduler.extract, "
            "ml_scheduler.snapshot, ml_scheduler.simple; "
            "print(sorted(m for m in ('onnxruntime', 'torch', 'requests', 'flask') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
