"""The digits pipeline for real: train (a few epochs), export, int8, fp16, prune, distill, measure.

One module-scoped run (11 s on the busy 2-core host) feeds every assertion. Bounds, in accuracy
points on the 450 held-out digits: fp32 >= 0.95; int8 within 0.03 of fp32; fp16 within 0.005;
the pruned + fine-tuned model within 0.03; the student >= 0.90.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from model_zoo.optimize import digits, measure
from model_zoo.optimize.pipeline import Measured, PipelineConfig, run_digits

pytestmark = pytest.mark.integration

CONFIG = PipelineConfig(epochs=8, finetune_epochs=3, distill_epochs=8, calibration_samples=64,
                        latency_runs=20, warmup=2)


@pytest.fixture(scope="module")
def measured() -> Measured:
    return run_digits(CONFIG)


def test_every_variant_loads_in_onnxruntime_and_keeps_its_accuracy(measured: Measured) -> None:
    assert set(measured.variants) == {"fp32", "int8", "fp16", "pruned", "distilled"}
    acc = measured.quality
    assert acc["fp32"] >= 0.95
    assert abs(acc["int8"] - acc["fp32"]) <= 0.03
    assert abs(acc["fp16"] - acc["fp32"]) <= 0.005
    assert acc["pruned"] >= acc["fp32"] - 0.03
    assert acc["distilled"] >= 0.90
    split = digits.load_split(CONFIG.seed)
    for name, variant in measured.variants.items():
        onnx.checker.check_model(onnx.load_from_string(variant.onnx_bytes))
        session = measure.session(variant.onnx_bytes)
        # inputs and outputs stay float32 in every variant (fp16 keeps its io types)
        assert session.get_inputs()[0].type == "tensor(float)", name
        assert measure.accuracy(session, split.x_test, split.y_test) == pytest.approx(acc[name])


def test_int8_is_qdq_and_fp16_weights_are_half(measured: Measured) -> None:
    int8 = onnx.load_from_string(measured.variants["int8"].onnx_bytes)
    assert {"QuantizeLinear", "DequantizeLinear"} <= {n.op_type for n in int8.graph.node}
    fp16 = onnx.load_from_string(measured.variants["fp16"].onnx_bytes)
    weights = [i for i in fp16.graph.initializer if i.name.endswith("weight")]
    assert weights and all(w.data_type == onnx.TensorProto.FLOAT16 for w in weights)


def test_pruned_model_is_really_smaller(measured: Measured) -> None:
    fp32, pruned = measured.variants["fp32"], measured.variants["pruned"]
    assert pruned.size_bytes < 0.6 * fp32.size_bytes
    assert pruned.parameter_count is not None and fp32.parameter_count is not None
    assert pruned.parameter_count < fp32.parameter_count
    assert pruned.parameters["widths"]["c1"] == 16 and pruned.parameters["channels_removed_physically"]


def test_student_is_smaller_than_teacher(measured: Measured) -> None:
    teacher, student = measured.variants["fp32"], measured.variants["distilled"]
    assert student.size_bytes < teacher.size_bytes / 4
    assert (student.parameter_count or 0) < (teacher.parameter_count or 0) / 4
    assert student.parameters["temperature"] > 1


def test_choice_and_registry_documents(measured: Measured) -> None:
    host = measured.choices[measured.host_class]
    assert not host.emulated and host.variant in measured.variants
    chosen_p50 = measured.latency.p50_ms[host.variant]
    eligible = [n for n, q in measured.quality.items() if q >= measured.accuracy_floor]
    assert chosen_p50 == min(measured.latency.p50_ms[n] for n in eligible)
    assert host.speedup == pytest.approx(measured.latency.p50_ms["fp32"] / chosen_p50)
    lineage = measured.lineage("int8", {"name": "digits", "version": 1})
    assert lineage["parent"] == {"name": "digits", "version": 1}
    assert lineage["operation"] == "quantize_int8_static" and lineage["parameters"]["format"] == "QDQ"
    assert {"torch", "onnxruntime"} <= set(lineage["tools"])
    metrics = measured.metrics("int8")
    assert metrics["quality"]["accuracy"] == measured.quality["int8"]
    assert metrics[f"latency/{measured.host_class}"]["p50_ms"] > 0


def test_a_digits_cnn_is_rebuilt_from_its_export(measured: Measured) -> None:
    rebuilt = digits.digits_cnn_from_onnx(measured.variants["pruned"].onnx_bytes)
    assert rebuilt.widths() == measured.variants["pruned"].parameters["widths"]
    x = digits.load_split(0).x_test[:8]
    session = measure.session(measured.variants["pruned"].onnx_bytes)
    expected = np.concatenate([session.run(None, {"input": x[i:i + 1]})[0] for i in range(len(x))])
    with torch.no_grad():
        got = rebuilt(torch.from_numpy(x)).numpy()
    assert np.allclose(got, expected, atol=1e-4)
    with pytest.raises(ValueError, match="not a DigitsCNN export"):
        digits.digits_cnn_from_onnx(measured.variants["int8"].onnx_bytes)
