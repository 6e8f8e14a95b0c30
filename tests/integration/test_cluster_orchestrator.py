"""The cluster orchestrator against a real Mosquitto, a fake root (Flask) and fake nodes (paho).

The root is a small Flask app in a thread serving the model artifact and recording what the
cluster PUTs and pushes; nodes are plain paho clients answering DeployCommands. Nothing
sleeps: every wait polls with a deadline or waits on an event.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import paho.mqtt.client as mqtt
import pytest
import requests
from flask import Flask, jsonify, request
from onnx import TensorProto, helper, numpy_helper
from paho.mqtt.enums import CallbackAPIVersion
from werkzeug.serving import make_server

from cluster_orchestrator.app import ClusterRuntime, build_config
from treeline_common import messages, topics
from treeline_common.messages import (
    DeleteCommand,
    DeployCommand,
    NodeStatus,
    NodeTelemetry,
    ProfileCommand,
    ProfileResult,
    StageState,
)
from treeline_common.netutil import poll_until

pytestmark = pytest.mark.integration

DEADLINE = 20.0


def tiny_model() -> bytes:
    """x[1,8] -> MatMul -> Relu -> MatMul -> Relu -> MatMul -> y[1,4]: small, several cut points."""
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.standard_normal((8, 16)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.standard_normal((16, 16)).astype(np.float32), "w2")
    w3 = numpy_helper.from_array(rng.standard_normal((16, 4)).astype(np.float32), "w3")
    nodes = [
        helper.make_node("MatMul", ["input", "w1"], ["h1"], name="mm1"),
        helper.make_node("Relu", ["h1"], ["r1"], name="relu1"),
        helper.make_node("MatMul", ["r1", "w2"], ["h2"], name="mm2"),
        helper.make_node("Relu", ["h2"], ["r2"], name="relu2"),
        helper.make_node("MatMul", ["r2", "w3"], ["output"], name="mm3"),
    ]
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 8])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 4])],
        initializer=[w1, w2, w3])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


class FakeRoot:
    """Serves the model, stores PUT artifacts, records cluster registration and pushes."""

    def __init__(self, model: bytes) -> None:
        self.model = model
        self.artifacts: dict[str, bytes] = {}
        self.pushes: list[dict[str, Any]] = []
        self.registrations: list[dict[str, Any]] = []
        self.profiles: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        app = Flask("fake-root")

        @app.get("/api/models/tiny/versions/1/profiles")
        def list_profiles() -> Any:
            with self._lock:
                return jsonify({"profiles": dict(self.profiles)})

        @app.put("/api/models/tiny/versions/1/profiles/<device_class>")
        def put_profile(device_class: str) -> Any:
            with self._lock:
                self.profiles[device_class] = request.get_json()
            return jsonify(request.get_json())

        @app.post("/api/clusters/register")
        def register() -> Any:
            with self._lock:
                self.registrations.append(request.get_json())
            return jsonify({"cluster_id": "cluster-abc"})

        @app.get("/api/artifacts/<sha>")
        def get_artifact(sha: str) -> Any:
            with self._lock:
                data = self.artifacts.get(sha)
            if data is None and sha == hashlib.sha256(self.model).hexdigest():
                data = self.model
            if data is None:
                return jsonify({"error": {"code": "NOT_FOUND", "message": "no artifact", "details": []}}), 404
            return data, 200, {"Content-Type": "application/octet-stream"}

        @app.put("/api/artifacts/<sha>")
        def put_artifact(sha: str) -> Any:
            data = request.get_data()
            if hashlib.sha256(data).hexdigest() != sha:
                error = {"code": "INTEGRITY_ERROR", "message": "digest", "details": []}
                return jsonify({"error": error}), 422
            with self._lock:
                self.artifacts[sha] = data
            return jsonify({"sha256": sha}), 201

        @app.post("/api/information/<cluster_id>")
        def information(cluster_id: str) -> Any:
            with self._lock:
                self.pushes.append(dict(request.get_json(), cluster_id=cluster_id))
            return jsonify({})

        self._server = make_server("127.0.0.1", 0, app, threaded=True)
        self.url = f"http://127.0.0.1:{self._server.server_port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def job(self, service_id: str, instance: int = 0, max_partitions: int = 2, sha: str | None = None,
            scheduler_profile: str = "flops-balanced") -> dict:
        """A root job; the default profile is the FLOPs-balanced baseline, which spreads even this
        tiny model over every node (the optimal planner would rightly keep it on one)."""
        return {
            "service_id": service_id, "instance": instance, "root_url": self.url,
            "microservice": {"microservice_name": "tiny", "microservice_namespace": "test",
                             "virtualization": "ml-model",
                             "model": {"name": "tiny", "version": 1, "max_partitions": max_partitions,
                                       "scheduler_profile": scheduler_profile,
                                       "input": {"name": "input", "shape": [1, 8], "dtype": "float32"}}},
            "model": {"name": "tiny", "version": 1, "sha256": sha or hashlib.sha256(self.model).hexdigest(),
                      "signature": {"inputs": [{"name": "input", "dtype": "float32", "shape": [1, 8]}],
                                    "outputs": [{"name": "output", "dtype": "float32", "shape": [1, 4]}]}},
        }

    def job_push(self, service_id: str, status: str) -> dict[str, Any] | None:
        """The latest pushed job entry of ``service_id`` if it has ``status``."""
        with self._lock:
            pushes = list(self.pushes)
        for push in reversed(pushes):
            for job in push["jobs"]:
                if job["service_id"] == service_id:
                    return job if job["status"] == status else None
        return None

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


class FakeNode:
    """A node engine reduced to its MQTT behaviour: birth, telemetry, answers to commands."""

    def __init__(self, broker: Any, node_id: str, answer: str = "READY", reason: str = "",
                 speed: float = 1.0, device_class: str = "server") -> None:
        self.node_id = node_id
        self.speed = speed
        self.device_class = device_class
        self.answer = answer
        self.reason = reason
        self.deploys: list[DeployCommand] = []
        self.deletes: list[DeleteCommand] = []
        self.profiled: list[ProfileCommand] = []
        self.ready = threading.Event()
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"fake-{node_id}")
        self._client.will_set(topics.status(node_id),
                              messages.encode(NodeStatus(node_id, "offline", seq=1, ts=time.time())),
                              qos=1, retain=True)
        self._client.on_connect = self._on_connect
        self._client.on_message = self._on_message
        self._client.connect(broker.host, broker.port, keepalive=30)
        self._client.loop_start()

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any = None) -> None:
        client.subscribe([(topics.control_deploy(self.node_id), 1), (topics.control_delete(self.node_id), 1),
                          (topics.control_profile(self.node_id), 1)])
        client.publish(topics.status(self.node_id),
                       messages.encode(NodeStatus(self.node_id, "online", seq=1, ts=time.time())),
                       qos=1, retain=True)
        client.publish(topics.information(self.node_id), messages.encode(NodeTelemetry(
            node_id=self.node_id, ts=time.time(), cpu_percent=10.0, cpu_count=4, memory_percent=50.0,
            memory_total_mb=8192, memory_available_mb=4096, memory_limit_mb=4096)), qos=1)
        self.ready.set()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        if msg.topic.endswith("/control/deploy"):
            deploy = messages.decode(DeployCommand, bytes(msg.payload))
            self.deploys.append(deploy)
            client.publish(topics.job(self.node_id), messages.encode(StageState(
                node_id=self.node_id, deployment_id=deploy.deployment_id, stage=deploy.stage,
                state=self.answer, generation=deploy.generation, reason=self.reason, ts=time.time())), qos=1)
        elif msg.topic.endswith("/control/delete"):
            self.deletes.append(messages.decode(DeleteCommand, bytes(msg.payload)))
        elif msg.topic.endswith("/control/profile"):
            profile = messages.decode(ProfileCommand, bytes(msg.payload))
            self.profiled.append(profile)
            base = {"mm1": 0.02, "relu1": 0.005, "mm2": 0.03, "relu2": 0.005, "mm3": 0.01}
            op_ms = {name: ms / self.speed for name, ms in base.items()}
            client.publish(topics.profile_result(self.node_id), messages.encode(ProfileResult(
                node_id=self.node_id, request_id=profile.request_id, sha256=profile.sha256,
                device_class=self.device_class, op_ms=op_ms, total_ms=sum(op_ms.values()), runs=profile.runs,
                ts=time.time())), qos=1)

    def crash(self) -> None:
        """Drop the TCP connection without DISCONNECT, so the broker sends the last will."""
        self._client.loop_stop()
        sock = self._client.socket()
        if sock is not None:
            sock.close()

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


class Env:
    def __init__(self, broker: Any, root: FakeRoot, data_dir: Path) -> None:
        self.broker = broker
        self.root = root
        self.data_dir = data_dir
        self.nodes: list[FakeNode] = []
        self.runtime: ClusterRuntime | None = None

    def start_cluster(self, stage_timeout: float = 15.0) -> ClusterRuntime:
        config = build_config("cluster-test", self.root.url, self.broker.url, "",
                              push_interval=1.0, telemetry_interval=30.0, heartbeat_misses=3,
                              stage_timeout=stage_timeout, liveness_period=0.2)
        self.runtime = ClusterRuntime(config, self.data_dir, "127.0.0.1", 0, self.broker.url)
        self.runtime.start()
        assert self.runtime.bus.wait_connected(DEADLINE)
        return self.runtime

    def stop_cluster(self) -> None:
        if self.runtime is not None:
            self.runtime.stop()
            self.runtime = None

    @property
    def url(self) -> str:
        assert self.runtime is not None
        return self.runtime.url

    def register(self, name: str, speed: float = 1.0, profile: str = "server") -> str:
        body = {"name": name, "profile": profile, "device_class": profile, "emulated": True,
                "arch": "x86_64", "cpu_count": 4, "memory_limit_mb": 4096, "speed_factor": speed,
                "accelerators": [], "battery": None, "labels": ["server"],
                "data_endpoint": f"tcp://127.0.0.1:{7000 + len(self.nodes)}"}
        answer = requests.post(f"{self.url}/api/node/register", json=body, timeout=5)
        assert answer.status_code == 200, answer.text
        return answer.json()["node_id"]

    def add_node(self, name: str, speed: float = 1.0, answer: str = "READY", reason: str = "",
                 profile: str = "server") -> FakeNode:
        node = FakeNode(self.broker, self.register(name, speed, profile), answer, reason, speed, profile)
        self.nodes.append(node)
        assert node.ready.wait(DEADLINE)
        poll_until(lambda: self.node(node.node_id)["online"], DEADLINE, what=f"{name} online")
        return node

    def node(self, node_id: str) -> dict[str, Any]:
        nodes = requests.get(f"{self.url}/api/nodes", timeout=5).json()["nodes"]
        return next(n for n in nodes if n["node_id"] == node_id)

    def deployment(self, service_id: str, instance: int = 0) -> dict[str, Any]:
        return requests.get(f"{self.url}/api/deployments/{service_id}/{instance}", timeout=5).json()

    def wait_status(self, service_id: str, status: str, timeout: float = DEADLINE) -> dict[str, Any]:
        return poll_until(lambda: (d := self.deployment(service_id)).get("status") == status and d,
                          timeout, what=f"{service_id} {status}")


@pytest.fixture()
def env(mqtt_broker: Any, tmp_path: Path) -> Iterator[Env]:
    root = FakeRoot(tiny_model())
    environment = Env(mqtt_broker, root, tmp_path / "cluster")
    environment.start_cluster()
    yield environment
    environment.stop_cluster()
    for node in environment.nodes:
        node.stop()
    root.stop()


def test_job_runs_on_two_nodes_and_root_sees_running(env: Env) -> None:
    fast = env.add_node("fast-1", speed=1.0)
    slow = env.add_node("slow-1", speed=0.5, profile="jetson-nano")
    poll_until(lambda: env.root.registrations, DEADLINE, what="cluster registration")
    answer = requests.post(f"{env.url}/api/service/svc-a/0", json=env.root.job("svc-a"), timeout=5)
    assert answer.status_code == 202, answer.text

    job = poll_until(lambda: env.root.job_push("svc-a", "RUNNING"), DEADLINE, what="RUNNING pushed")
    placement = job["placement"]
    assert placement["deployment_id"] == "svc-a-0" and placement["generation"] == 1
    assert placement["input"] == {"name": "input", "shape": [1, 8], "dtype": "float32"}
    assert placement["outputs"] == ["output"]
    stages = placement["stages"]
    assert [s["index"] for s in stages] == [0, 1]
    assert {s["node_id"] for s in stages} == {fast.node_id, slow.node_id}
    assert [s["stage_key"] for s in stages] == ["svc-a-0/1/0", "svc-a-0/1/1"]
    assert all(s["state"] == "READY" and s["endpoint"].startswith("tcp://") for s in stages)
    assert stages[-1]["cut_bytes"] == 0 and stages[0]["cut_bytes"] > 0
    assert placement["entry"] == {"node_id": stages[0]["node_id"], "endpoint": stages[0]["endpoint"],
                                  "stage_key": "svc-a-0/1/0"}
    # partitions on the root match what the nodes were told to load, byte for byte
    commands = {c.stage: c for n in (fast, slow) for c in n.deploys}
    assert sorted(commands) == [0, 1]
    for stage in stages:
        cmd = commands[stage["index"]]
        assert cmd.sha256 == stage["sha256"]
        assert hashlib.sha256(env.root.artifacts[cmd.sha256]).hexdigest() == cmd.sha256
        # nodes fetch partitions from their cluster (a re-plan must not need the root)
        assert cmd.artifact_url == f"{env.runtime.url}/api/artifacts/{cmd.sha256}"
        assert requests.get(cmd.artifact_url, timeout=5).content == env.root.artifacts[cmd.sha256]
    assert commands[0].next is not None and commands[0].next.stage_key == "svc-a-0/1/1"
    assert commands[0].next.endpoint == stages[1]["endpoint"] and commands[1].next is None
    assert env.deployment("svc-a")["status"] == "RUNNING"
    push = env.root.pushes[-1]
    assert push["cluster_id"] == "cluster-abc" and push["aggregate"]["active_nodes"] == 2
    # one node per device class measured the model, and the root keeps the profiles
    assert (len(fast.profiled), len(slow.profiled)) == (1, 1)
    assert env.root.profiles["server"]["op_ms"]["mm2"] == 0.03
    assert env.root.profiles["jetson-nano"]["op_ms"]["mm2"] == 0.06
    assert job["explanation"]["plan"]["latency_ms"] > 0 and placement["predicted"]["latency_ms"] > 0


def test_optimal_plan_keeps_a_tiny_model_on_the_fastest_node(env: Env) -> None:
    fast = env.add_node("fast-1", speed=1.0)
    slow = env.add_node("slow-1", speed=0.5, profile="jetson-nano")
    job = env.root.job("svc-o", scheduler_profile="default")
    assert requests.post(f"{env.url}/api/service/svc-o/0", json=job, timeout=5).status_code == 202
    pushed = poll_until(lambda: env.root.job_push("svc-o", "RUNNING"), DEADLINE, what="RUNNING pushed")
    assert [s["node_id"] for s in pushed["placement"]["stages"]] == [fast.node_id]
    explanation = env.deployment("svc-o")["explanation"]
    assert explanation["filtered_or_unused"][slow.node_id].startswith("not_selected")
    assert set(explanation["scores"]) == {fast.node_id, slow.node_id}


def test_node_failure_answer_fails_the_deployment(env: Env) -> None:
    env.add_node("bad-1", answer="FAILED", reason="onnxruntime exploded")
    requests.post(f"{env.url}/api/service/svc-b/0", json=env.root.job("svc-b", max_partitions=1), timeout=5)
    job = poll_until(lambda: env.root.job_push("svc-b", "FAILED"), DEADLINE, what="FAILED pushed")
    assert "onnxruntime exploded" in job["status_detail"]
    assert "onnxruntime exploded" in env.deployment("svc-b")["status_detail"]


def test_wrong_model_digest_fails_with_reason(env: Env) -> None:
    env.add_node("ok-1")
    requests.post(f"{env.url}/api/service/svc-c/0", json=env.root.job("svc-c", sha="0" * 64), timeout=5)
    doc = env.wait_status("svc-c", "FAILED")
    # the model is fetched by digest from the root; an unknown digest fails every attempt with the reason
    assert "failed after" in doc["status_detail"] and "0" * 64 in doc["status_detail"]


def test_no_online_node_is_unschedulable(env: Env) -> None:
    requests.post(f"{env.url}/api/service/svc-d/0", json=env.root.job("svc-d"), timeout=5)
    doc = env.wait_status("svc-d", "FAILED")
    assert doc["status_detail"].startswith("unschedulable")


def test_last_will_marks_node_offline(env: Env) -> None:
    node = env.add_node("doomed-1")
    node.crash()
    poll_until(lambda: not env.node(node.node_id)["online"], DEADLINE, what="node offline after last will")


def test_lost_node_degrades_and_replans_on_the_rest(env: Env) -> None:
    keep = env.add_node("keep-1", speed=1.0)
    lose = env.add_node("lose-1", speed=0.5)
    requests.post(f"{env.url}/api/service/svc-e/0", json=env.root.job("svc-e"), timeout=5)
    env.wait_status("svc-e", "RUNNING")
    lose.crash()
    doc = poll_until(lambda: (d := env.deployment("svc-e"))["status"] == "RUNNING"
                     and d["placement"]["generation"] == 2 and d, DEADLINE, what="re-planned RUNNING")
    assert {s["node_id"] for s in doc["placement"]["stages"]} == {keep.node_id}
    assert any(c.generation == 2 for c in keep.deploys)


def test_delete_sends_delete_commands(env: Env) -> None:
    node = env.add_node("del-1")
    requests.post(f"{env.url}/api/service/svc-f/0", json=env.root.job("svc-f", max_partitions=1), timeout=5)
    env.wait_status("svc-f", "RUNNING")
    answer = requests.delete(f"{env.url}/api/service/svc-f/0", timeout=5)
    assert answer.status_code == 200 and answer.json()["status"] == "DELETED"
    poll_until(lambda: node.deletes, DEADLINE, what="delete command")
    assert node.deletes[0].deployment_id == "svc-f-0"


def test_restart_keeps_nodes_and_deployments(env: Env) -> None:
    node = env.add_node("persist-1")
    requests.post(f"{env.url}/api/service/svc-g/0", json=env.root.job("svc-g", max_partitions=1), timeout=5)
    before = env.wait_status("svc-g", "RUNNING")
    env.stop_cluster()
    env.start_cluster()
    assert env.node(node.node_id)["name"] == "persist-1"
    after = env.deployment("svc-g")
    assert after["status"] == "RUNNING" and after["placement"] == before["placement"]
    assert env.register("persist-1") == node.node_id  # idempotent by name across restarts


def test_process_registers_with_root_and_exits_cleanly_on_sigterm(mqtt_broker: Any, tmp_path: Path) -> None:
    import signal
    import subprocess
    import sys

    from treeline_common.netutil import free_port

    root = FakeRoot(tiny_model())
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "cluster_orchestrator", "--host", "127.0.0.1", "--port", str(port),
         "--root-url", root.url, "--mqtt-url", mqtt_broker.url, "--data-dir", str(tmp_path / "c"),
         "--name", "cluster-proc", "--push-interval", "1", "--log-level", "WARNING"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        poll_until(lambda: requests.get(f"http://127.0.0.1:{port}/api/health", timeout=1).ok, DEADLINE,
                   what="cluster process healthy")
        poll_until(lambda: root.pushes, DEADLINE, what="first push")
        assert root.registrations[0]["cluster_name"] == "cluster-proc"
        assert root.registrations[0]["url"] == f"http://127.0.0.1:{port}"
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=DEADLINE)
        assert proc.returncode == 0, err.decode()
        assert out == b""  # logs go to stderr, nothing is printed
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        root.stop()
