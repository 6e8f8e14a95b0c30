"""A tiny, torch-free ONNX DAG CNN for fast tests.

Why it exists: partitioning, extraction and node-engine tests need a model with the awkward
features of real CNNs (a residual Add whose skip tensor crosses cuts, a Concat of two branches,
Constant nodes consumed far from where they are defined, a Reshape fed by a constant shape)
but must run in milliseconds and without torch. Weights come from ``numpy.random.RandomState``
so every call with the same seed yields byte-identical models.

Structure (input "input" [1,3,16,16] float32 -> output "output" [1,10] float32)::

    input -> Conv3x3(3->8) -> Relu = a
    a -> Conv3x3(8->8) -> Relu = b ;  Add(a, b) = res              (residual)
    res -> Conv1x1(8->4) = c1 ; res -> Conv3x3(8->4) = c2
    Concat(c1, c2) = cat -> MaxPool2x2 -> Mul(scale: Constant node) -> GlobalAveragePool
    -> Reshape(shape: Constant node) -> Gemm(8->10) = output
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

INPUT_NAME = "input"
OUTPUT_NAME = "output"
INPUT_SHAPE = (1, 3, 16, 16)
OPSET = 17
IR_VERSION = 8


def _init(rng: np.random.RandomState, name: str, shape: tuple[int, ...], scale: float) -> onnx.TensorProto:
    values = (rng.standard_normal(shape) * scale).astype(np.float32)
    return numpy_helper.from_array(values, name=name)


def tiny_dag_model(seed: int = 0) -> onnx.ModelProto:
    """Build the tiny DAG model; deterministic in ``seed``; passes ``onnx.checker``."""
    rng = np.random.RandomState(seed)
    inits = [
        _init(rng, "conv0.w", (8, 3, 3, 3), 0.4),
        _init(rng, "conv0.b", (8,), 0.1),
        _init(rng, "conv1.w", (8, 8, 3, 3), 0.2),
        _init(rng, "conv1.b", (8,), 0.1),
        _init(rng, "branch_a.w", (4, 8, 1, 1), 0.4),
        _init(rng, "branch_b.w", (4, 8, 3, 3), 0.2),
        _init(rng, "fc.w", (10, 8), 0.5),
        _init(rng, "fc.b", (10,), 0.1),
    ]
    scale = numpy_helper.from_array(np.array([1.5], dtype=np.float32), name="scale_value")
    shape = numpy_helper.from_array(np.array([1, 8], dtype=np.int64), name="shape_value")
    nodes = [
        # Constant nodes first, far from their consumers: a cut in between must duplicate them.
        helper.make_node("Constant", [], ["scale"], name="scale_const", value=scale),
        helper.make_node("Constant", [], ["flat_shape"], name="shape_const", value=shape),
        helper.make_node("Conv", ["input", "conv0.w", "conv0.b"], ["conv0"], name="conv0",
                         pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv0"], ["a"], name="relu0"),
        helper.make_node("Conv", ["a", "conv1.w", "conv1.b"], ["conv1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv1"], ["b"], name="relu1"),
        helper.make_node("Add", ["a", "b"], ["res"], name="residual_add"),
        helper.make_node("Conv", ["res", "branch_a.w"], ["c1"], name="branch_a"),
        helper.make_node("Conv", ["res", "branch_b.w"], ["c2"], name="branch_b", pads=[1, 1, 1, 1]),
        helper.make_node("Concat", ["c1", "c2"], ["cat"], name="concat", axis=1),
        helper.make_node("MaxPool", ["cat"], ["pool"], name="maxpool", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Mul", ["pool", "scale"], ["scaled"], name="scale_mul"),
        helper.make_node("GlobalAveragePool", ["scaled"], ["gap"], name="gap"),
        helper.make_node("Reshape", ["gap", "flat_shape"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "fc.w", "fc.b"], ["output"], name="fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_dag",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, list(INPUT_SHAPE))],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, [1, 10])],
        initializer=inits,
    )
    model = helper.make_model(graph, producer_name="treeline.model_zoo",
                              opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model


def tiny_dag_bytes(seed: int = 0) -> bytes:
    """The serialised tiny model (what the registry and node engines handle)."""
    return tiny_dag_model(seed).SerializeToString()


def example_input(seed: int = 0) -> np.ndarray:
    """A deterministic float32 input of shape ``INPUT_SHAPE``."""
    return np.random.RandomState(seed).standard_normal(INPUT_SHAPE).astype(np.float32)
