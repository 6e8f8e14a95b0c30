"""Emulated links end to end: real node engine processes, real Mosquitto, real onnxruntime.

An ``rpi4`` node (the data's source) serves a relay stage deployed with ``relay=True``; a
``server`` node runs the model. A request entering on the rpi4 must pay the rpi4's uplink
for the raw input (``5 ms + bytes / (50 Mbit/s * 125)``) and still get the model's exact
answer. A stand-in cluster (Flask) answers registration and serves the artifact; the test
plays the cluster's MQTT side.
"""

from __future__ import annotations

import hashlib
import statistics
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import paho.mqtt.client as mqtt
import pytest
from onnx import TensorProto, helper, numpy_helper

from treeline_common import topics
from treeline_common.messages import (
    DeployCommand,
    NextStage,
    NodeStatus,
    PayloadError,
    StageState,
    decode,
    encode,
)
from treeline_common.netutil import free_port
from treeline_common.profiles import get_profile

from node_engine.data_plane.client import TensorClient
from node_engine.emulation import link_delay_ms

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
DEADLINE = 20.0
WIDTH = 62_500  # input floats: 250,000 bytes -> 5 + 40 = 45 ms on the rpi4 uplink


def _model() -> bytes:
    rng = np.random.default_rng(11)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, WIDTH])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    w = numpy_helper.from_array((rng.standard_normal((WIDTH, 4)) * 0.01).astype(np.float32), "W")
    b = numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "B")
    nodes = [helper.make_node("MatMul", ["x", "W"], ["m"]), helper.make_node("Add", ["m", "B"], ["y"])]
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y], initializer=[w, b]),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


@dataclass
class Cluster:
    url: str
    registrations: dict[str, dict[str, Any]]
    model: bytes


@dataclass
class Observer:
    """Records every message per topic; waits for a matching one with a deadline."""

    client: mqtt.Client | None = None
    messages: dict[str, list[bytes]] = field(default_factory=dict)
    cond: threading.Condition = field(default_factory=threading.Condition)

    def on_message(self, client: Any, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with self.cond:
            self.messages.setdefault(msg.topic, []).append(bytes(msg.payload))
            self.cond.notify_all()

    def wait_for(self, topic: str, cls: type, predicate: Callable[[Any], bool]) -> Any:
        def match() -> Any:
            for raw in self.messages.get(topic, []):
                try:
                    message = decode(cls, raw)
                except PayloadError:
                    continue
                if predicate(message):
                    return message
            return None

        with self.cond:
            found = self.cond.wait_for(match, DEADLINE)
        assert found, f"no matching {cls.__name__} on {topic}: {self.messages.get(topic)}"
        return found

    def seen(self, topic: str, cls: type) -> list[Any]:
        with self.cond:
            return [decode(cls, raw) for raw in self.messages.get(topic, [])]

    def publish(self, topic: str, payload: bytes) -> None:
        assert self.client is not None
        self.client.publish(topic, payload, qos=1).wait_for_publish(5)


@pytest.fixture(scope="module")
def cluster(mqtt_broker: Any) -> Iterator[Cluster]:
    from flask import Flask, Response, jsonify, request
    from werkzeug.serving import make_server

    port, registrations, model = free_port(), {}, _model()
    app = Flask("fake-cluster")

    @app.post("/api/node/register")
    def _register() -> Any:
        body = request.get_json()
        registrations[body["name"]] = body
        return jsonify({"node_id": f"node-{body['name']}", "cluster_id": "c", "mqtt_host": mqtt_broker.host,
                        "mqtt_port": mqtt_broker.port, "telemetry_interval": 0.5})

    @app.get("/artifacts/model")
    def _artifact() -> Any:
        return Response(model, mimetype="application/octet-stream")

    server = make_server("127.0.0.1", port, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield Cluster(f"http://127.0.0.1:{port}", registrations, model)
    server.shutdown()


@pytest.fixture(scope="module")
def observer(mqtt_broker: Any) -> Iterator[Observer]:
    obs = Observer()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    connected = threading.Event()
    client.on_connect = lambda *args: (client.subscribe("nodes/#", qos=1), connected.set())
    client.on_message = obs.on_message
    client.connect(mqtt_broker.host, mqtt_broker.port)
    client.loop_start()
    assert connected.wait(10), "observer could not connect"
    obs.client = client
    yield obs
    client.disconnect()
    client.loop_stop()


@pytest.fixture(scope="module")
def nodes(cluster: Cluster, observer: Observer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    tmp = tmp_path_factory.mktemp("links")
    processes = []
    for name, profile in (("cam", "rpi4"), ("big", "server")):
        log = (tmp / f"{name}.log").open("wb")
        cmd = [sys.executable, "-m", "node_engine", "--cluster-url", cluster.url, "--name", name, "--profile",
               profile, "--telemetry-interval", "0.5", "--data-dir", str(tmp / name), "--threads", "1"]
        processes.append(subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT))
    try:
        for name in ("cam", "big"):
            observer.wait_for(topics.status(f"node-{name}"), NodeStatus, lambda s: s.state == "online")
        yield None
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
            process.wait(10)


def _ready(observer: Observer, node_id: str, stage: int) -> StageState:
    return observer.wait_for(topics.job(node_id), StageState,
                             lambda s: s.deployment_id == "links" and s.stage == stage and s.state == "READY")


def test_registration_carries_link_figures(nodes: None, cluster: Cluster) -> None:
    cam = cluster.registrations["cam"]
    assert (cam["uplink_mbps"], cam["link_rtt_ms"], cam["device_class"]) == (50.0, 5.0, "rpi4")
    assert (cam["power_w"], cam["radio_nj_per_byte"]) == (6.0, 50.0)
    assert cluster.registrations["big"]["device_class"] == "server"


def test_relay_on_rpi4_pays_its_uplink_for_the_raw_input(nodes: None, cluster: Cluster,
                                                         observer: Observer) -> None:
    cam_endpoint = cluster.registrations["cam"]["data_endpoint"]
    big_endpoint = cluster.registrations["big"]["data_endpoint"]
    sha = hashlib.sha256(cluster.model).hexdigest()
    observer.publish(topics.control_deploy("node-big"), encode(DeployCommand(
        deployment_id="links", stage=1, artifact_url=f"{cluster.url}/artifacts/model", sha256=sha,
        inputs=["x"], outputs=["y"], generation=1)))
    observer.publish(topics.control_deploy("node-cam"), encode(DeployCommand(
        deployment_id="links", stage=0, artifact_url="", sha256="", inputs=["x"], outputs=["x"],
        next=NextStage("node-big", big_endpoint, "links/1"), generation=1, relay=True)))
    _ready(observer, "node-big", 1)
    _ready(observer, "node-cam", 0)
    cam_states = [s.state for s in observer.seen(topics.job("node-cam"), StageState)
                  if s.deployment_id == "links"]
    assert "DOWNLOADING" not in cam_states and "LOADING" not in cam_states  # a relay loads nothing

    rng = np.random.default_rng(5)
    inputs = [{"x": rng.standard_normal((1, WIDTH)).astype(np.float32)} for _ in range(6)]
    rpi4 = get_profile("rpi4")
    expected_ms = link_delay_ms(inputs[0]["x"].nbytes, rpi4.uplink_mbps, rpi4.link_rtt_ms)
    assert expected_ms == pytest.approx(45.0)
    reference = ort.InferenceSession(cluster.model, providers=["CPUExecutionProvider"])
    with TensorClient(cam_endpoint) as via_cam, TensorClient(big_endpoint) as direct:
        relayed = via_cam.infer_many("links/0", inputs, max_in_flight=1, timeout=DEADLINE)
        straight = direct.infer_many("links/1", inputs, max_in_flight=1, timeout=DEADLINE)
    for item, (outputs, timings, latency_s) in zip(inputs, relayed):
        np.testing.assert_allclose(outputs["y"], reference.run(["y"], item)[0], rtol=1e-4, atol=1e-4)
        assert set(timings) == {"links/0", "links/0->link", "links/1"}
        assert expected_ms <= timings["links/0->link"] < expected_ms + 60.0
        assert latency_s * 1000.0 >= expected_ms
    for item, (outputs, timings, _) in zip(inputs, straight):
        np.testing.assert_allclose(outputs["y"], reference.run(["y"], item)[0], rtol=1e-4, atol=1e-4)
        assert set(timings) == {"links/1"}  # the server node is the last stage: nothing to ship
    extra_ms = (statistics.median(r[2] for r in relayed) - statistics.median(r[2] for r in straight)) * 1000.0
    assert extra_ms >= 0.9 * expected_ms  # the relay path costs the rpi4 uplink on top
