"""model_zoo: torch-free import, deterministic tiny model, cache, MobileNetV2 export fidelity."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

import model_zoo
from model_zoo.tiny import INPUT_SHAPE, example_input, tiny_dag_bytes, tiny_dag_model


def test_importing_model_zoo_does_not_import_torch() -> None:
    code = ("import sys, model_zoo, model_zoo.tiny, model_zoo.mobilenet_v2; "
            "print('torch' in sys.modules, 'onnxruntime' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_tiny_model_is_valid_and_deterministic() -> None:
    model = tiny_dag_model(seed=3)
    onnx.checker.check_model(model, full_check=True)
    assert [i.name for i in model.graph.input] == ["input"]
    assert [o.name for o in model.graph.output] == ["output"]
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert tuple(dims) == INPUT_SHAPE == (1, 3, 16, 16)
    ops = {node.op_type for node in model.graph.node}
    assert {"Add", "Concat", "Constant"} <= ops
    assert tiny_dag_bytes(3) == model.SerializeToString()
    assert tiny_dag_bytes(3) != tiny_dag_bytes(4)


def test_tiny_model_runs() -> None:
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(tiny_dag_bytes(), providers=["CPUExecutionProvider"])
    out = session.run(["output"], {"input": example_input(0)})[0]
    assert out.shape == (1, 10)
    assert np.isfinite(out).all() and float(np.abs(out).max()) > 0.1


def test_build_onnx_unknown_name_lists_known() -> None:
    with pytest.raises(KeyError, match="mobilenet_v2"):
        model_zoo.build_onnx("resnet9000")


def test_cached_onnx_writes_then_reads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []

    def builder() -> bytes:
        calls.append(1)
        return tiny_dag_bytes()

    monkeypatch.setitem(model_zoo.BUILTIN_MODELS, "tiny_dag", builder)
    first = model_zoo.cached_onnx("tiny_dag", tmp_path / "cache")
    second = model_zoo.cached_onnx("tiny_dag", tmp_path / "cache")
    assert first == second == tiny_dag_bytes()
    assert (tmp_path / "cache" / "tiny_dag.onnx").read_bytes() == first
    assert len(calls) == 1
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["tiny_dag.onnx"]


def test_mobilenet_parameter_count_matches_reference() -> None:
    pytest.importorskip("torch")
    from model_zoo.mobilenet_v2 import build_model

    model = build_model(seed=0)
    assert sum(p.numel() for p in model.parameters()) == 3_504_872  # torchvision's mobilenet_v2
    assert not model.training


def test_mobilenet_export_matches_torch() -> None:
    pytest.importorskip("torch")
    ort = pytest.importorskip("onnxruntime")
    from model_zoo.mobilenet_v2 import example_input as torch_input
    from model_zoo.mobilenet_v2 import exported_onnx, torch_reference_output

    data = exported_onnx(0)
    model = onnx.load_from_string(data)
    assert not any(init.data_location == onnx.TensorProto.EXTERNAL for init in model.graph.initializer)
    assert [i.name for i in model.graph.input] == ["input"]
    assert [o.name for o in model.graph.output] == ["output"]
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    expected = torch_reference_output(seed=0, input_seed=5)
    got = session.run(["output"], {"input": torch_input(5).numpy()})[0]
    assert got.shape == expected.shape == (1, 1000)
    assert float(np.abs(got - expected).max()) < 1e-4
    assert float(expected.std()) > 1e-3  # the model is not degenerate
