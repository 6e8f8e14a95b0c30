"""Node engines as real processes answer ProfileCommands over the real broker.

A minimal stand-in cluster (registration + artifact download) and the test's own paho client
play the cluster's side, as in ``test_node_engine.py``.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import paho.mqtt.client as mqtt
import pytest
from onnx import TensorProto, helper, numpy_helper

from ml_scheduler.costmodel import CostModel
from ml_scheduler.graph import analyze_model
from treeline_common import topics
from treeline_common.messages import NodeStatus, PayloadError, ProfileCommand, ProfileResult, decode, encode
from treeline_common.netutil import free_port

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
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
    model = helper.make_model(helper.make_graph(nodes, "chain", [x], [y], initializer=inits),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


@pytest.fixture(scope="module")
def model() -> bytes:
    return conv_chain()


@pytest.fixture(scope="module")
def cluster_url(mqtt_broker: Any, model: bytes) -> Iterator[str]:
    from flask import Flask, Response, jsonify, request
    from werkzeug.serving import make_server

    app = Flask("fake-cluster")

    @app.post("/api/node/register")
    def _register() -> Any:
        return jsonify({"node_id": f"node-{request.get_json()['name']}", "cluster_id": "c",
                        "mqtt_host": mqtt_broker.host, "mqtt_port": mqtt_broker.port, "telemetry_interval": 1.0})

    @app.get("/artifacts/model")
    def _artifact() -> Any:
        return Response(model, mimetype="application/octet-stream")

    port = free_port()
    server = make_server("127.0.0.1", port, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{port}"
    server.shutdown()


class Inbox:
    """Every message on ``nodes/#``; waits with a deadline (no sleeps)."""

    def __init__(self, broker: Any) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self.cond = threading.Condition()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        connected = threading.Event()
        self.client.on_connect = lambda *a: (self.client.subscribe("nodes/#", qos=1), connected.set())
        self.client.on_message = self._on_message
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        assert connected.wait(10)

    def _on_message(self, client: Any, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with self.cond:
            self.messages.append((msg.topic, bytes(msg.payload)))
            self.cond.notify_all()

    def wait_for(self, topic: str, cls: type, predicate: Any) -> Any:
        def match() -> Any:
            for t, raw in self.messages:
                if t == topic:
                    try:
                        message = decode(cls, raw)
                    except PayloadError:
                        continue
                    if predicate(message):
                        return message
            return None

        with self.cond:
            found = self.cond.wait_for(match, DEADLINE)
        assert found, f"no {cls.__name__} on {topic} within {DEADLINE}s"
        return found

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture(scope="module")
def nodes(cluster_url: str, mqtt_broker: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Inbox]:
    tmp = tmp_path_factory.mktemp("nodes")
    inbox = Inbox(mqtt_broker)
    procs = []
    for name, profile in (("srv", "server"), ("pi", "rpi4")):
        cmd = [sys.executable, "-m", "node_engine", "--cluster-url", cluster_url, "--name", name, "--profile",
               profile, "--data-dir", str(tmp / name), "--threads", "1"]
        procs.append(subprocess.Popen(cmd, cwd=REPO, stdout=(tmp / f"{name}.log").open("wb"),
                                      stderr=subprocess.STDOUT))
    try:
        for name in ("srv", "pi"):
            inbox.wait_for(topics.status(f"node-{name}"), NodeStatus, lambda s: s.state == "online")
        yield inbox
    finally:
        for proc in procs:
            proc.kill()
            proc.wait(10)
        inbox.close()


def _profile(inbox: Inbox, cluster_url: str, node: str, request_id: str, sha: str) -> ProfileResult:
    cmd = ProfileCommand(request_id, f"{cluster_url}/artifacts/model", sha, runs=15, warmup=3)
    inbox.client.publish(topics.control_profile(node), encode(cmd), qos=1).wait_for_publish(5)
    return inbox.wait_for(topics.profile_result(node), ProfileResult, lambda r: r.request_id == request_id)


def test_nodes_answer_profiles_and_emulated_times_scale(nodes: Inbox, cluster_url: str, model: bytes) -> None:
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


def test_bad_digest_is_answered_with_an_error(nodes: Inbox, cluster_url: str) -> None:
    result = _profile(nodes, cluster_url, "node-srv", "p-bad", "0" * 64)
    assert "sha256 mismatch" in result.error and result.op_ms == {} and result.device_class == "server"
