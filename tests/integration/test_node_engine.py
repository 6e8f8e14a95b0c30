"""Node engines as real processes: real Mosquitto, real onnxruntime, real sockets on loopback.

A small Flask app stands in for the cluster (``POST /api/node/register``) and serves the
partition artifacts; the test plays the cluster's MQTT side with its own paho client.
"""

from __future__ import annotations

import hashlib
import signal
import subprocess
import sys
import threading
import time
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
    DeleteCommand,
    DeployCommand,
    NextStage,
    NodeStatus,
    NodeTelemetry,
    PayloadError,
    StageState,
    StageStats,
    decode,
    encode,
)
from treeline_common.netutil import free_port, poll_until

from node_engine.data_plane.client import TensorClient

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
DEADLINE = 20.0


# ---------------------------------------------------------------- models


def _model(nodes: list, inputs: list, outputs: list, inits: list) -> bytes:
    model = helper.make_model(helper.make_graph(nodes, "g", inputs, outputs, initializer=inits),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def build_models(seed: int = 7) -> dict[str, bytes]:
    """A 4-op chain split by hand: part0 = MatMul+Relu (x -> h), part1 = MatMul+Add (h -> y)."""
    rng = np.random.default_rng(seed)
    w1 = numpy_helper.from_array(rng.standard_normal((8, 16)).astype(np.float32), "W1")
    w2 = numpy_helper.from_array(rng.standard_normal((16, 4)).astype(np.float32), "W2")
    b = numpy_helper.from_array(rng.standard_normal((4,)).astype(np.float32), "B")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])
    h = helper.make_tensor_value_info("h", TensorProto.FLOAT, [1, 16])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    first = [helper.make_node("MatMul", ["x", "W1"], ["m"]), helper.make_node("Relu", ["m"], ["h"])]
    second = [helper.make_node("MatMul", ["h", "W2"], ["n"]), helper.make_node("Add", ["n", "B"], ["y"])]
    return {"whole": _model(first + second, [x], [y], [w1, w2, b]),
            "part0": _model(first, [x], [h], [w1]), "part1": _model(second, [h], [y], [w2, b])}


# ---------------------------------------------------------------- stand-in cluster (REST + artifacts)


@dataclass
class FakeCluster:
    url: str
    registrations: dict[str, dict[str, Any]]
    artifacts: dict[str, bytes]

    def sha(self, name: str) -> str:
        return hashlib.sha256(self.artifacts[name]).hexdigest()


def _serve_cluster(port: int, mqtt_host: str, mqtt_port: int, artifacts: dict[str, bytes],
                   registrations: dict[str, dict[str, Any]]) -> Any:
    from flask import Flask, Response, jsonify, request
    from werkzeug.serving import make_server

    app = Flask("fake-cluster")

    @app.post("/api/node/register")
    def _register() -> Any:
        body = request.get_json()
        registrations[body["name"]] = body
        return jsonify({"node_id": f"node-{body['name']}", "cluster_id": "cluster-test",
                        "mqtt_host": mqtt_host, "mqtt_port": mqtt_port, "telemetry_interval": 0.5})

    @app.get("/artifacts/<name>")
    def _artifact(name: str) -> Any:
        data = artifacts.get(name)
        return Response(data, mimetype="application/octet-stream") if data else ("", 404)

    server = make_server("127.0.0.1", port, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture(scope="module")
def cluster(mqtt_broker: Any) -> Iterator[FakeCluster]:
    port = free_port()
    artifacts, registrations = build_models(), {}
    server = _serve_cluster(port, mqtt_broker.host, mqtt_broker.port, artifacts, registrations)
    yield FakeCluster(f"http://127.0.0.1:{port}", registrations, artifacts)
    server.shutdown()


# ---------------------------------------------------------------- MQTT observer


@dataclass
class Observer:
    """The cluster's side of MQTT: records every message per topic; waits with a deadline."""

    client: mqtt.Client
    messages: dict[str, list[bytes]] = field(default_factory=dict)
    cond: threading.Condition = field(default_factory=threading.Condition)

    def on_message(self, client: Any, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with self.cond:
            self.messages.setdefault(msg.topic, []).append(bytes(msg.payload))
            self.cond.notify_all()

    def wait_for(self, topic: str, cls: type, predicate: Callable[[Any], bool], timeout: float = DEADLINE) -> Any:
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
            found = self.cond.wait_for(match, timeout)
        assert found, f"no matching {cls.__name__} on {topic} within {timeout}s: {self.messages.get(topic)}"
        return found

    def publish(self, topic: str, payload: bytes) -> None:
        self.client.publish(topic, payload, qos=1).wait_for_publish(5)


def _mqtt_client(broker: Any, on_message: Callable[..., None] | None = None) -> mqtt.Client:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    connected = threading.Event()
    client.on_connect = lambda *args: (client.subscribe("nodes/#", qos=1), connected.set())
    if on_message is not None:
        client.on_message = on_message
    client.connect(broker.host, broker.port)
    client.loop_start()
    assert connected.wait(10), "observer could not connect"
    return client


@pytest.fixture(scope="module")
def observer(mqtt_broker: Any) -> Iterator[Observer]:
    obs = Observer(client=None)  # type: ignore[arg-type]
    obs.client = _mqtt_client(mqtt_broker, obs.on_message)
    yield obs
    obs.client.disconnect()
    obs.client.loop_stop()


# ---------------------------------------------------------------- node processes


@dataclass
class NodeProcess:
    name: str
    process: subprocess.Popen[bytes]

    @property
    def node_id(self) -> str:
        return f"node-{self.name}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)


def _start_node(cluster_url: str, name: str, tmp: Path, profile: str = "native") -> NodeProcess:
    log = (tmp / f"{name}.log").open("wb")
    cmd = [sys.executable, "-m", "node_engine", "--cluster-url", cluster_url, "--name", name, "--profile", profile,
           "--telemetry-interval", "0.3", "--data-dir", str(tmp / name), "--threads", "1"]
    return NodeProcess(name, subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT))


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., NodeProcess]]:
    """Start node engines; every one started is killed and reaped after the test."""
    started: list[NodeProcess] = []

    def _spawn(cluster_url: str, name: str, profile: str = "native") -> NodeProcess:
        node = _start_node(cluster_url, name, tmp_path, profile)
        started.append(node)
        return node

    yield _spawn
    for node in started:
        node.stop()


@pytest.fixture(scope="module")
def pair(cluster: FakeCluster, observer: Observer,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[NodeProcess, NodeProcess]]:
    tmp = tmp_path_factory.mktemp("pair")
    nodes = (_start_node(cluster.url, "alpha", tmp), _start_node(cluster.url, "beta", tmp, profile="rpi4"))
    try:
        for node in nodes:
            observer.wait_for(topics.status(node.node_id), NodeStatus, lambda s: s.state == "online")
        yield nodes
    finally:
        for node in nodes:
            node.stop()


def _deploy(cluster: FakeCluster, dep: str, stage: int, part: str, sha: str | None = None,
            nxt: NextStage | None = None) -> DeployCommand:
    return DeployCommand(deployment_id=dep, stage=stage, artifact_url=f"{cluster.url}/artifacts/{part}",
                         sha256=sha or cluster.sha(part), inputs=["x"] if stage == 0 else ["h"],
                         outputs=["h"] if stage == 0 else ["y"], next=nxt, generation=1)


def _wait_state(observer: Observer, node: NodeProcess, dep: str, stage: int, state: str) -> StageState:
    return observer.wait_for(topics.job(node.node_id), StageState,
                             lambda s: s.deployment_id == dep and s.stage == stage and s.state == state)


# ---------------------------------------------------------------- tests


def test_registration_telemetry_and_retained_birth(pair: tuple[NodeProcess, NodeProcess], cluster: FakeCluster,
                                                   observer: Observer, mqtt_broker: Any) -> None:
    alpha, beta = pair
    body = cluster.registrations["beta"]
    assert body["profile"] == "rpi4" and body["emulated"] is True and body["speed_factor"] == 0.25
    assert body["memory_limit_mb"] <= 4096 and body["battery"] == {"percent": 80.0, "charging": False}
    assert body["data_endpoint"].startswith("tcp://127.0.0.1:")
    telemetry = observer.wait_for(topics.information(beta.node_id), NodeTelemetry, lambda t: True)
    assert telemetry.emulated and telemetry.profile == "rpi4" and telemetry.battery.percent == 80.0
    assert observer.wait_for(topics.information(alpha.node_id), NodeTelemetry, lambda t: not t.emulated)
    # a late subscriber still sees the retained birth
    late: list[bytes] = []
    got = threading.Event()

    def on_message(client: Any, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        if msg.topic == topics.status(alpha.node_id) and msg.retain:
            late.append(bytes(msg.payload))
            got.set()

    client = _mqtt_client(mqtt_broker, on_message)
    try:
        assert got.wait(10)
    finally:
        client.disconnect()
        client.loop_stop()
    status = decode(NodeStatus, late[0])
    assert status.state == "online" and status.seq > 0


def test_two_stage_pipeline_matches_whole_model(pair: tuple[NodeProcess, NodeProcess], cluster: FakeCluster,
                                                observer: Observer) -> None:
    alpha, beta = pair
    endpoint_a = cluster.registrations["alpha"]["data_endpoint"]
    endpoint_b = cluster.registrations["beta"]["data_endpoint"]
    observer.publish(topics.control_deploy(beta.node_id), encode(_deploy(cluster, "pipe", 1, "part1")))
    nxt = NextStage(beta.node_id, endpoint_b, "pipe/1")
    observer.publish(topics.control_deploy(alpha.node_id), encode(_deploy(cluster, "pipe", 0, "part0", nxt=nxt)))
    for node, stage in ((alpha, 0), (beta, 1)):
        _wait_state(observer, node, "pipe", stage, "DOWNLOADING")
        _wait_state(observer, node, "pipe", stage, "LOADING")
        assert _wait_state(observer, node, "pipe", stage, "READY").load_ms > 0
    whole = ort.InferenceSession(cluster.artifacts["whole"], providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(1)
    inputs = [{"x": rng.standard_normal((1, 8)).astype(np.float32)} for _ in range(10)]
    with TensorClient(endpoint_a) as client:
        for item in inputs:
            outputs, timings = client.infer("pipe/0", item)
            np.testing.assert_allclose(outputs["y"], whole.run(["y"], item)[0], atol=1e-5)
            assert set(timings) == {"pipe/0", "pipe/1"}
        results = client.infer_many("pipe/0", inputs, max_in_flight=4)
    for item, (outputs, _, latency) in zip(inputs, results):
        np.testing.assert_allclose(outputs["y"], whole.run(["y"], item)[0], atol=1e-5)
        assert latency > 0
    observer.wait_for(topics.information(alpha.node_id), NodeTelemetry, lambda t: t.stages == ["pipe/0"])
    stats = observer.wait_for(topics.job_resources(beta.node_id), StageStats,
                              lambda s: s.deployment_id == "pipe" and s.requests == 20)
    assert stats.stage == 1 and stats.compute_ms_mean > 0
    # delete unloads and the stage stops serving
    observer.publish(topics.control_delete(alpha.node_id), encode(DeleteCommand("pipe", None)))
    _wait_state(observer, alpha, "pipe", 0, "REMOVED")
    with TensorClient(endpoint_a) as client, pytest.raises(RuntimeError, match="unknown stage"):
        client.infer("pipe/0", inputs[0])


def test_same_node_stages_and_bad_payloads(pair: tuple[NodeProcess, NodeProcess], cluster: FakeCluster,
                                           observer: Observer) -> None:
    alpha, _ = pair
    endpoint_a = cluster.registrations["alpha"]["data_endpoint"]
    control = topics.control_deploy(alpha.node_id)
    observer.publish(control, b"\x00 not json")
    observer.publish(control, b'{"v": 1, "deployment_id": "x"}')
    observer.publish(topics.control_delete(alpha.node_id), b"[]")
    observer.publish(control, encode(_deploy(cluster, "local", 1, "part1")))
    observer.publish(control, encode(_deploy(cluster, "local", 0, "part0",
                                             nxt=NextStage(alpha.node_id, endpoint_a, "local/1"))))
    _wait_state(observer, alpha, "local", 0, "READY")
    _wait_state(observer, alpha, "local", 1, "READY")
    x = {"x": np.ones((1, 8), np.float32)}
    with TensorClient(endpoint_a) as client:
        _, timings = client.infer("local/0", x)
    assert set(timings) == {"local/0", "local/1"}
    assert alpha.process.poll() is None


def test_wrong_sha256_reports_failed(pair: tuple[NodeProcess, NodeProcess], cluster: FakeCluster,
                                     observer: Observer) -> None:
    _, beta = pair
    wrong = "ab" * 32
    observer.publish(topics.control_deploy(beta.node_id), encode(_deploy(cluster, "bad", 0, "part0", sha=wrong)))
    failed = _wait_state(observer, beta, "bad", 0, "FAILED")
    assert failed.reason == f"sha256 mismatch: expected {wrong} got {cluster.sha('part0')}"


def test_sigkill_publishes_last_will(cluster: FakeCluster, observer: Observer,
                                     spawn: Callable[..., NodeProcess]) -> None:
    node = spawn(cluster.url, "doomed")
    online = observer.wait_for(topics.status(node.node_id), NodeStatus, lambda s: s.state == "online")
    node.process.send_signal(signal.SIGKILL)
    offline = observer.wait_for(topics.status(node.node_id), NodeStatus, lambda s: s.state == "offline")
    assert offline.seq >= online.seq


def test_sigterm_exits_zero_promptly_with_offline_status(cluster: FakeCluster, observer: Observer,
                                                         spawn: Callable[..., NodeProcess]) -> None:
    node = spawn(cluster.url, "polite")
    observer.wait_for(topics.status(node.node_id), NodeStatus, lambda s: s.state == "online")
    started = time.monotonic()
    node.process.send_signal(signal.SIGTERM)
    assert node.process.wait(5) == 0
    assert time.monotonic() - started < 2.0
    observer.wait_for(topics.status(node.node_id), NodeStatus, lambda s: s.state == "offline")


def test_node_started_before_its_cluster_registers_once_it_is_up(mqtt_broker: Any, observer: Observer,
                                                                 spawn: Callable[..., NodeProcess]) -> None:
    port = free_port()
    node = spawn(f"http://127.0.0.1:{port}", "early")
    registrations: dict[str, dict[str, Any]] = {}
    poll_until(lambda: node.process.poll() is None, 2.0, what="node running")
    server = _serve_cluster(port, mqtt_broker.host, mqtt_broker.port, {}, registrations)
    try:
        poll_until(lambda: "early" in registrations, DEADLINE, what="late registration")
        observer.wait_for(topics.status(node.node_id), NodeStatus, lambda s: s.state == "online")
    finally:
        server.shutdown()


def test_reconnects_with_a_new_birth_after_the_broker_restarts(tmp_path: Path,
                                                               spawn: Callable[..., NodeProcess]) -> None:
    from treeline_cli.broker import start_broker

    broker = start_broker("auto", workdir=tmp_path / "b1")
    port, registrations = free_port(), {}
    server = _serve_cluster(port, broker.host, broker.port, {}, registrations)
    watcher: Observer | None = None
    try:
        node = spawn(f"http://127.0.0.1:{port}", "phoenix")
        watcher = Observer(client=None)  # type: ignore[arg-type]
        watcher.client = _mqtt_client(broker, watcher.on_message)
        first = watcher.wait_for(topics.status(node.node_id), NodeStatus, lambda s: s.state == "online")
        watcher.client.disconnect()
        watcher.client.loop_stop()
        broker.stop()
        broker = start_broker("auto", port=broker.port, workdir=tmp_path / "b2")
        watcher = Observer(client=None)  # type: ignore[arg-type]
        watcher.client = _mqtt_client(broker, watcher.on_message)
        second = watcher.wait_for(topics.status(node.node_id), NodeStatus,
                                  lambda s: s.state == "online" and s.seq > first.seq)
        assert second.seq > first.seq
        watcher.wait_for(topics.information(node.node_id), NodeTelemetry, lambda t: True)
    finally:
        if watcher is not None:
            watcher.client.disconnect()
            watcher.client.loop_stop()
        server.shutdown()
        broker.stop()
