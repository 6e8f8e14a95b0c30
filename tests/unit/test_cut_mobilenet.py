"""Every cut of MobileNetV2 yields two sub-models whose chained output equals the whole model."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("torch")

from ml_scheduler.extract import extract_partitions  # noqa: E402
from ml_scheduler.graph import ModelGraph, analyze_model  # noqa: E402
from ml_scheduler.partition import balanced_cuts  # noqa: E402
from model_zoo.mobilenet_v2 import exported_onnx  # noqa: E402


def _session(data: bytes) -> "ort.InferenceSession":
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])


def _chain(parts: list, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    values = dict(feed)
    for part in parts:
        feed = {name: values[name] for name in part.inputs}
        outputs = _session(part.model_bytes).run(list(part.outputs), feed)
        values = dict(zip(part.outputs, outputs))
    return values


@pytest.fixture(scope="module")
def mobilenet() -> tuple[onnx.ModelProto, ModelGraph, np.ndarray, np.ndarray]:
    data = exported_onnx(0)
    model = onnx.load_from_string(data)
    graph = analyze_model(model)
    x = np.random.RandomState(1).standard_normal((1, 3, 224, 224)).astype(np.float32)
    whole = _session(data).run(["output"], {"input": x})[0]
    return model, graph, x, whole


def test_graph_shape_of_mobilenet(mobilenet) -> None:
    model, graph, _, whole = mobilenet
    assert whole.shape == (1, 1000)
    assert len(graph.ops) == len(model.graph.node)  # the dynamo export has no Constant nodes
    assert graph.cut_positions() == list(range(1, len(graph.ops)))
    # MobileNetV2 is ~300 M multiply-adds; 2 FLOPs each.
    assert 0.55e9 < graph.total_flops < 0.65e9
    assert graph.param_bytes == sum(op.param_bytes for op in graph.ops)
    # 3.5 M parameters (BatchNorm folded into the convs), float32.
    assert 13.5e6 < graph.param_bytes < 14.5e6


def test_cut_sets_are_small_and_contain_skips(mobilenet) -> None:
    model, graph, _, _ = mobilenet
    initializers = {init.name for init in model.graph.initializer}
    sizes = [len(graph.cut_set(p)) for p in graph.cut_positions()]
    assert max(sizes) == 2 and min(sizes) == 1
    for p in graph.cut_positions():
        assert not set(graph.cut_set(p)) & initializers
    # Just before each residual Add the cut holds the skip tensor and the branch output.
    adds = [i for i, op in enumerate(graph.ops) if op.op_type == "Add"]
    assert len(adds) == 10
    for p in adds:
        assert set(graph.cut_set(p)) == set(graph.ops[p].inputs)
    # After the first conv: 1x32x112x112 float32.
    assert graph.cut_bytes(1) == 32 * 112 * 112 * 4


def test_every_cut_chains_to_the_whole_model(mobilenet) -> None:
    model, graph, x, whole = mobilenet
    failures = []
    for p in graph.cut_positions():
        first, second = extract_partitions(model, graph, [p])
        assert first.outputs == second.inputs == graph.cut_set(p)
        assert first.cut_bytes == graph.cut_bytes(p) and second.cut_bytes == 0
        out = _chain([first, second], {"input": x})["output"]
        diff = float(np.abs(out - whole).max())
        if diff > 1e-5:
            failures.append((p, diff))
    assert failures == []


def test_three_balanced_partitions(mobilenet) -> None:
    model, graph, x, whole = mobilenet
    positions = balanced_cuts(graph, 3)
    parts = extract_partitions(model, graph, positions)
    assert len(parts) == 3
    assert sum(part.flops for part in parts) == graph.total_flops
    assert max(part.flops for part in parts) < 0.45 * graph.total_flops
    assert len({part.sha256 for part in parts}) == 3
    np.testing.assert_allclose(_chain(parts, {"input": x})["output"], whole, atol=1e-5, rtol=0)
