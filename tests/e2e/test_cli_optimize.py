"""``treeline model optimize`` against a real root: each step a new version with lineage, metrics, tags.

The digits CNN is trained briefly in-process and registered through the client; the CLI then runs
as a subprocess (``--quick``, int8 and fp16 only: the torch steps are covered by
tests/integration/test_optimize_digits.py) and must leave versions 2 and 3 derived from version 1.
A model of the digits' input shape that is no digits CNN, asked to be pruned, fails in one line and
nothing is registered (int8 alone would have worked on it).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper
from treeline_test_helpers import run_cli, running_stack

from model_zoo.optimize.digits import digits_cnn_onnx
from treeline_cli.root_client import RootClient
from treeline_cli.stack import Stack

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(tmp_path_factory.mktemp("stack"), nodes=0, node_labels={}) as running:
        yield running


def test_optimize_registers_each_variant_with_lineage_and_metrics(stack: Stack, tmp_path: Path) -> None:
    root = RootClient(stack.root_url)
    assert root.register_model("digits", digits_cnn_onnx(epochs=8))["version"] == 1
    code, out, err = run_cli(stack, tmp_path, "model", "optimize", "digits:1", "--steps", "int8,fp16",
                             "--quick", "-o", "json", timeout=240)
    assert code == 0, err[-5:]
    report = json.loads(out)
    variants = [(v["variant"], v["version"]) for v in report["variants"]]
    assert variants == [("fp32", 1), ("int8", 2), ("fp16", 3)]
    for number, operation in ((2, "quantize_int8_static"), (3, "convert_fp16")):
        version = root.model_version("digits", number)
        assert version["lineage"]["parent"] == {"name": "digits", "version": 1}
        assert version["lineage"]["operation"] == operation
        assert "onnxruntime" in version["lineage"]["tools"]
        accuracy = version["metrics"]["quality"]["accuracy"]
        assert accuracy == pytest.approx(report["variants"][number - 1]["quality"]) and accuracy > 0.8
        assert version["metrics"][f"latency/{report['measured_on']}"]["p50_ms"] > 0
        assert version["tags"]["optimize.variant"] == report["variants"][number - 1]["variant"]
    base = root.model_version("digits", 1)
    assert "lineage" not in base or not base["lineage"]
    assert base["metrics"]["quality"]["accuracy"] == pytest.approx(report["variants"][0]["quality"])
    host = report["choices"][report["measured_on"]]
    assert host["chosen_variant"] in {"fp32", "int8", "fp16"} and host["emulated"] is False
    chosen = [v for v in report["variants"] if report["measured_on"] in v["chosen_for"]]
    assert [v["variant"] for v in chosen] == [host["chosen_variant"]]


def _flatten_linear() -> bytes:
    """[1, 1, 8, 8] -> Flatten -> MatMul -> [1, 10]: the digits' input shape, not a DigitsCNN."""
    weight = numpy_helper.from_array(np.ones((64, 10), dtype=np.float32), "w")
    nodes = [helper.make_node("Flatten", ["input"], ["flat"]),
             helper.make_node("MatMul", ["flat", "w"], ["logits"])]
    graph = helper.make_graph(nodes, "linear",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 1, 8, 8])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10])], [weight])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def test_pruning_a_model_that_is_no_digits_cnn_fails_in_one_line(stack: Stack, tmp_path: Path) -> None:
    root = RootClient(stack.root_url)
    root.register_model("linear", _flatten_linear())
    code, _, err = run_cli(stack, tmp_path, "model", "optimize", "linear", "--steps", "int8,prune", "--quick",
                           timeout=120)
    assert code == 1
    errors = [line for line in err if line.startswith("error:")]
    assert len(errors) == 1 and "not a DigitsCNN export" in errors[0], err[-3:]
    assert [v["version"] for v in root.model_versions("linear")] == [1]  # nothing registered
