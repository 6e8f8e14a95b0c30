"""A compressed boundary tensor over an emulated slow uplink: two real data-plane servers on
loopback serve MobileNetV2 cut in two; the first forwards over a Raspberry Pi 4's uplink (50 Mbit/s,
5 ms) with ``NextStage.compression`` none, fp16 and int8. The answer matches what the cluster's
measurement predicts for that codec (cluster_orchestrator.compression.run_chain), stays within the
measured bound of the uncompressed answer, and the emulated link wait shrinks with the bytes."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

import model_zoo
from cluster_orchestrator.compression import max_abs_diff, measurement_session, run_chain
from ml_scheduler.extract import extract_partitions
from ml_scheduler.graph import analyze_model
from node_engine.data_plane.client import TensorClient
from node_engine.data_plane.forwarding import link_timing_key
from node_engine.emulation import EmulatedLink, link_delay_ms
from node_engine.runtime import load_partition
from node_engine.stages import LoadedStage, StageTable
from tests.treeline_test_helpers import start_data_plane_server
from treeline_common.messages import NextStage
from treeline_common.profiles import get_profile
from treeline_common.tensor_codec import encoded_bytes

CUT = 25  # two tensors (a skip connection) cross it: 702,464 bytes


@pytest.fixture(scope="module")
def partitions(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Path], list[Any]]:
    cache = Path(os.environ.get("TREELINE_MODEL_CACHE", Path(tempfile.gettempdir()) / "treeline-models"))
    model = onnx.load_from_string(model_zoo.cached_onnx("mobilenet_v2", cache))
    parts = extract_partitions(model, analyze_model(model), [CUT])
    root = tmp_path_factory.mktemp("parts")
    paths = []
    for part in parts:
        paths.append(root / f"part{part.index}.onnx")
        paths[-1].write_bytes(part.model_bytes)
    return paths, parts


def test_compressed_boundary_gives_the_measured_answer_and_a_shorter_link_wait(
        partitions: tuple[list[Path], list[Any]], servers: list[Any]) -> None:
    paths, parts = partitions
    rpi4 = get_profile("rpi4")
    sink_table, sender_table = StageTable(), StageTable()
    sink = start_data_plane_server(servers, sink_table, "box")
    sink_table.put(LoadedStage("m/1/1", "m", 1, "x", 1, load_partition(paths[1]), None,
                               outputs=parts[1].outputs))
    sender = start_data_plane_server(servers, sender_table, "pi",
                                     link=EmulatedLink(rpi4.uplink_mbps, rpi4.link_rtt_ms))
    first = load_partition(paths[0])
    x = {"input": np.random.default_rng(3).random((1, 3, 224, 224), dtype=np.float32)}
    sessions = [measurement_session(part.model_bytes) for part in parts]  # the cluster's measurement
    outputs = [part.outputs for part in parts]
    plain, sent, _ = run_chain(sessions, outputs, x)
    served: dict[str, tuple[dict[str, np.ndarray], float]] = {}
    with TensorClient(sender.endpoint) as client:
        for codec in ("", "fp16", "int8"):
            sender_table.put(LoadedStage("m/1/0", "m", 0, "x", 1, first,
                                         NextStage("box", sink.endpoint, "m/1/1", compression=codec),
                                         outputs=parts[0].outputs))
            result, timings = client.infer("m/1/0", x, timeout=30.0)
            served[codec] = result, timings[link_timing_key("m/1/0")]
    answer, link_ms = served[""]
    assert max_abs_diff(plain, answer) <= 1e-5
    assert link_ms >= link_delay_ms(sent[0], rpi4.uplink_mbps, rpi4.link_rtt_ms) * 0.95  # 117 ms
    for codec in ("fp16", "int8"):
        answer, link_ms = served[codec]
        expected, _, _ = run_chain(sessions, outputs, x, codec, frozenset({0}))
        bound = max_abs_diff(plain, expected)  # what the cluster measures for the explanation
        assert max_abs_diff(expected, answer) <= 1e-5
        assert max_abs_diff(plain, answer) <= bound + 1e-5
        assert int(np.argmax(answer["output"])) == int(np.argmax(plain["output"]))
        charged = link_delay_ms(int(encoded_bytes(sent[0], codec)), rpi4.uplink_mbps, rpi4.link_rtt_ms)
        most = served[""][1] * (0.6 if codec == "fp16" else 0.35)
        assert charged * 0.95 <= link_ms <= most, (codec, link_ms)
