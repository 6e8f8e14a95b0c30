"""The cluster measures a proposed codec's effect on MobileNetV2's outputs and keeps it only
within the SLA's bound (cluster_orchestrator.compression); deploy commands carry the kept codec
on the route to another node only (planning.deploy_commands)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

import model_zoo
from cluster_orchestrator.compression import decide, max_abs_diff, route_codecs, sample_specs
from cluster_orchestrator.planning import build_placement, deploy_commands
from ml_scheduler.extract import Partition, extract_partitions
from ml_scheduler.graph import analyze_model
from treeline_cli.describe import compression_line

CUT = 25  # two tensors cross it (a skip connection): 702 KB
LATE_CUT = 90  # one 31 KB tensor close to the logits: int8 visibly changes them more than fp16


@pytest.fixture(scope="module")
def model() -> onnx.ModelProto:
    cache = Path(os.environ.get("TREELINE_MODEL_CACHE", Path(tempfile.gettempdir()) / "treeline-models"))
    return onnx.load_from_string(model_zoo.cached_onnx("mobilenet_v2", cache))


@pytest.fixture(scope="module")
def mobilenet(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[Partition]]:
    return model, extract_partitions(model, analyze_model(model), [CUT])


def _proposal(codecs: list[str]) -> dict[str, Any]:
    edge = {"stage": 0, "position": CUT, "from": "pi", "to": "box", "bytes_before": 702464,
            "transfer_ms": 110.0}
    options: dict[str, Any] = {"": {"predicted": {"latency_ms": 130.0}, "predicted_ms_saved": 0.0}}
    for codec, saved in (("int8", 80.0), ("fp16", 55.0)):
        options[codec] = {"predicted": {"latency_ms": 130.0 - saved}, "predicted_ms_saved": saved}
    return {"edges": [edge], "codecs": codecs, "options": options}


def test_sample_inputs_follow_the_model_signature(mobilenet: tuple[onnx.ModelProto, list[Partition]]) -> None:
    model, _ = mobilenet
    assert sample_specs(model) == [{"name": "input", "shape": [1, 3, 224, 224], "dtype": "float32"}]


def test_int8_kept_when_within_the_bound(mobilenet: tuple[onnx.ModelProto, list[Partition]]) -> None:
    model, parts = mobilenet
    decision = decide(model, parts, _proposal(["int8", "fp16"]), {"latency_ms": 130.0}, max_diff=1.0)
    entry = decision.explanation["compression"]
    assert decision.codec == "int8" and entry["codec"] == "int8"
    assert 0.0 < entry["output_max_abs_diff"] <= 1.0
    assert entry["bytes_before"] == 702464 and entry["bytes_after"] == 702464 // 4 + 2 * 4  # two tensors
    assert entry["predicted_ms_saved"] == 80.0 and entry["edge"] == "stage 0 (pi) -> stage 1 (box)"
    assert decision.predicted == {"latency_ms": 50.0, "compression": {"codec": "int8", "stages": [0]}}
    assert route_codecs(decision.predicted) == {0: "int8"}
    line = compression_line(entry)  # what `treeline describe` shows
    assert line.startswith("compression int8 on stage 0 (pi) -> stage 1 (box): "
                           "702464 -> 175624 bytes, 80.0 ms")
    assert line.endswith("(max 1)")


def test_codecs_dropped_in_order_when_outputs_change_too_much(model: onnx.ModelProto) -> None:
    parts = extract_partitions(model, analyze_model(model), [LATE_CUT])
    int8 = decide(model, parts, _proposal(["int8"]), {}, max_diff=None).explanation["compression"]
    fp16 = decide(model, parts, _proposal(["fp16"]), {}, max_diff=None).explanation["compression"]
    assert 0.0 < fp16["output_max_abs_diff"] < int8["output_max_abs_diff"] / 4
    bound = (fp16["output_max_abs_diff"] + int8["output_max_abs_diff"]) / 2
    between = decide(model, parts, _proposal(["int8", "fp16"]), {}, max_diff=bound)
    entry = between.explanation["compression"]
    assert between.codec == "fp16", entry
    assert "dropped" in entry["tried"][0] and entry["note"] == "fp16 on the bottleneck link (int8 dropped)"
    none = decide(model, parts, _proposal(["int8", "fp16"]), {"latency_ms": 130.0}, max_diff=1e-12)
    assert none.codec == "" and none.predicted == {"latency_ms": 130.0}
    assert [t["codec"] for t in none.explanation["compression"]["tried"]] == ["int8", "fp16"]
    assert "sent uncompressed" in none.explanation["compression"]["note"]


def test_nothing_proposed_changes_nothing(mobilenet: tuple[onnx.ModelProto, list[Partition]]) -> None:
    model, parts = mobilenet
    decision = decide(model, parts, None, {"latency_ms": 3.0}, max_diff=0.1)
    assert decision.codec == "" and decision.predicted == {"latency_ms": 3.0} and decision.explanation == {}


def test_max_abs_diff_sees_nan_and_equal_infinities() -> None:
    a = {"y": np.array([1.0, np.inf, np.nan])}
    assert max_abs_diff(a, {"y": np.array([1.5, np.inf, np.nan])}) == 0.5
    assert max_abs_diff(a, {"y": np.array([1.0, np.inf, 2.0])}) == np.inf


def test_deploy_commands_compress_only_the_remote_route(
        mobilenet: tuple[onnx.ModelProto, list[Partition]]) -> None:
    _, parts = mobilenet
    nodes = {n: {"name": n, "data_endpoint": f"tcp://127.0.0.1:{port}"}
             for n, port in (("pi", 1), ("box", 2))}
    predicted = {"latency_ms": 50.0, "compression": {"codec": "fp16", "stages": [0]}}
    placement = build_placement("d", 1, "optimal", {"name": "input", "shape": [1, 3, 224, 224]}, ["output"],
                                parts, ["pi", "box"], nodes, predicted)
    commands = {cmd.stage: cmd for _, cmd in deploy_commands(placement, "http://root")}
    assert commands[0].next is not None and commands[0].next.compression == "fp16"
    assert commands[1].next is None
    same_node = build_placement("d", 1, "optimal", {"name": "input"}, ["output"], parts, ["pi", "pi"],
                                nodes, predicted)
    route = deploy_commands(same_node, "http://root")[0][1].next
    assert route is not None and route.compression == ""  # handed over in-process: never compressed
    assert route_codecs({"compression": {"codec": "zip", "stages": [0]}}) == {}
