"""Node engines as real processes answer ProfileCommands over the real broker.

A minimal stand-in cluster (registration + artifact download) and the test's own paho client
play the cluster's side, as in ``test_node_engine.py``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from ml_scheduler.costmodel import CostModel
from ml_scheduler.graph import analyze_model
from treeline_common import topics
from treeline_common.messages import ProfileCommand, ProfileResult, encode
from treeline_test_helpers import FakeCluster, Observer, onnx_model, running_nodes

pytestmark = pytest.mark.integration
DEADLINE = 60.0


def conv_chain(layers: int = 4, channels: int = 16, size: int = 48) -> bytes:
    """Conv3x3 + Relu blocks: a few ms per run, so timings stand well above the noise."""
    rng = np.random.default_rng(0)
    nodes, inits, prev = [], [], "input"
    for i in range(layers):
        w = (rng.standard_normal((channels, channels, 3, 3)) * 0.1).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        nodes.append(helper.make_node("Conv", [prev, f"w{i}"], [f"c{i}"], name=f"conv{i}", pads=[1, 1, 1, 1]))
        nodes.append(helper.make_node("Relu", [f"c{i}"], [f"r{i}"], name=f"relu{i}"))
        prev = f"r{i}"
    nodes.append(helper.make_node("GlobalAveragePool", [prev], ["output"], name="gap"))
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", channels, size, size])
    y = helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", channels, 1, 1])
    return onnx_model(nodes, [x], [y], inits, name="chain").SerializeToString()


@pytest.fixture(scope="module")
def model() -> bytes:
    return conv_chain()


@pytest.fixture(scope="module")
def cluster_url(mqtt_broker: Any, model: bytes) -> Iterator[str]:
    fake = FakeCluster.start(mqtt_broker, {"model": model}, cluster_id="c", telemetry_interval=1.0)
    yield fake.url
    fake.shutdown()


@pytest.fixture(scope="module")
def nodes(cluster_url: str, observer: Observer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Observer]:
    specs = (("srv", "server"), ("pi", "rpi4"))
    with running_nodes(cluster_url, specs, tmp_path_factory.mktemp("nodes"), observer, timeout=DEADLINE):
        yield observer


def _profile(observer: Observer, cluster_url: str, node: str, request_id: str, sha: str) -> ProfileResult:
    cmd = ProfileCommand(request_id, f"{cluster_url}/artifacts/model", sha, runs=15, warmup=3)
    observer.publish(topics.control_profile(node), encode(cmd))
    return observer.wait_for(topics.profile_result(node), ProfileResult, lambda r: r.request_id == request_id,
                             timeout=DEADLINE)


def test_nodes_answer_profiles_and_emulated_times_scale(nodes: Observer, cluster_url: str, model: bytes) -> None:
    sha = hashlib.sha256(model).hexdigest()
    graph = analyze_model(onnx.load_from_string(model))
    server = _profile(nodes, cluster_url, "node-srv", "p-srv", sha)
    pi = _profile(nodes, cluster_url, "node-pi", "p-pi", sha)
    for result, device_class in ((server, "server"), (pi, "rpi4")):
        assert not result.error and result.device_class == device_class and result.sha256 == sha
        assert result.runs == 15 and result.total_ms > 0
        assert set(result.op_ms) <= {op.name for op in graph.ops} and all(v > 0 for v in result.op_ms.values())
    # every op is covered: measured, or fused into a measured op (Conv+Relu run as one kernel)
    model_costs = CostModel.from_profiles(graph, {"server": server, "rpi4": pi})
    for device_class, speed in (("server", 1.0), ("rpi4", 0.25)):
        times, source = model_costs.op_times(graph, device_class, speed)
        assert source == "profile" and times.measured.all() and np.all(times.ms > 0)
    ratio = pi.total_ms / server.total_ms
    op_ratio = sum(pi.op_ms.values()) / sum(server.op_ms.values())
    assert 2.0 <= ratio <= 8.0 and 2.0 <= op_ratio <= 8.0, (ratio, op_ratio)


def test_bad_digest_is_answered_with_an_error(nodes: Observer, cluster_url: str) -> None:
    result = _profile(nodes, cluster_url, "node-srv", "p-bad", "0" * 64)
    assert "sha256 mismatch" in result.error and result.op_ms == {} and result.device_class == "server"
