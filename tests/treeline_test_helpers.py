"""Helpers shared by the test modules (importable as ``treeline_test_helpers``).

``tests/`` has no ``__init__.py`` and pytest runs in its default "prepend" import mode, so
``tests/conftest.py`` puts this folder on ``sys.path`` for every test file, run alone or not.
The name is deliberately unlike any installed package's.

Heavy or optional imports (onnxruntime, flask, paho) happen inside the helpers that need them,
so a unit test that skips without onnxruntime still imports this module.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ml_scheduler.framework import PlacementRequest
from ml_scheduler.snapshot import NodeView
from treeline_common import topics
from treeline_common.messages import NodeStatus, PayloadError, decode
from treeline_common.trainable import TRAINABLE_CLASSES, TRAINABLE_FEATURES

REPO = Path(__file__).resolve().parents[1]
DEADLINE = 20.0  # seconds an integration test waits for a message before failing

# ---------------------------------------------------------------- ONNX models


def onnx_model(nodes: Sequence[onnx.NodeProto], inputs: Sequence[onnx.ValueInfoProto],
               outputs: Sequence[onnx.ValueInfoProto], inits: Iterable[onnx.TensorProto] = (),
               name: str = "g") -> onnx.ModelProto:
    """An opset-17, IR-8 model of one graph (not checked)."""
    graph = helper.make_graph(list(nodes), name, list(inputs), list(outputs), initializer=list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def onnx_bytes(nodes: Sequence[onnx.NodeProto], inputs: Sequence[onnx.ValueInfoProto],
               outputs: Sequence[onnx.ValueInfoProto], inits: Iterable[onnx.TensorProto] = ()) -> bytes:
    """``onnx_model`` checked by ``onnx.checker`` and serialized."""
    model = onnx_model(nodes, inputs, outputs, inits)
    onnx.checker.check_model(model)
    return model.SerializeToString()


def chain_weights(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """W1 (8x16), W2 (16x4), B (4): drawn from ``rng`` in that order."""
    w1 = rng.standard_normal((8, 16)).astype(np.float32)
    w2 = rng.standard_normal((16, 4)).astype(np.float32)
    b = rng.standard_normal((4,)).astype(np.float32)
    return w1, w2, b


def chain_models(seed: int) -> dict[str, bytes]:
    """A 4-op chain split by hand: part0 = MatMul+Relu (x -> h), part1 = MatMul+Add (h -> y).

    Keys: ``whole``, ``part0``, ``part1``; weights from ``chain_weights(default_rng(seed))``.
    """
    arrays = chain_weights(np.random.default_rng(seed))
    w1, w2, b = (numpy_helper.from_array(a, n) for a, n in zip(arrays, ("W1", "W2", "B")))
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])
    h = helper.make_tensor_value_info("h", TensorProto.FLOAT, [1, 16])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    first = [helper.make_node("MatMul", ["x", "W1"], ["m"]), helper.make_node("Relu", ["m"], ["h"])]
    second = [helper.make_node("MatMul", ["h", "W2"], ["n"]), helper.make_node("Add", ["n", "B"], ["y"])]
    return {"whole": onnx_bytes(first + second, [x], [y], [w1, w2, b]),
            "part0": onnx_bytes(first, [x], [h], [w1]), "part1": onnx_bytes(second, [h], [y], [w2, b])}


def reversed_node_order(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` with its nodes listed back to front (no longer topologically sorted)."""
    shuffled = onnx.ModelProto()
    shuffled.CopyFrom(model)
    nodes = list(shuffled.graph.node)
    del shuffled.graph.node[:]
    shuffled.graph.node.extend(reversed(nodes))
    return shuffled


def ort_run(data: bytes, feed: dict[str, np.ndarray], outputs: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Run serialized model ``data`` once on one CPU thread; outputs by name."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    return dict(zip(outputs, session.run(list(outputs), feed)))


# ---------------------------------------------------------------- scheduler plugin inputs

MIB = 1024 * 1024
BASE_REQUEST = PlacementRequest(model_param_bytes=10 * MIB, min_stage_bytes=100 * MIB, model_flops=1e9,
                                input_bytes=600_000)


def node_view(node_id: str, **kw: object) -> NodeView:
    """An online 4 GiB x86_64 ``server`` node; ``kw`` overrides any field."""
    fields: dict[str, object] = {"node_id": node_id, "name": f"name-{node_id}", "profile": "server",
                                 "online": True, "speed_factor": 1.0, "memory_limit_mb": 4096.0,
                                 "arch": "x86_64"}
    fields.update(kw)
    return NodeView(**fields)  # type: ignore[arg-type]


# ---------------------------------------------------------------- data plane servers


def start_data_plane_server(servers: list[Any], table: Any, name: str, link: Any = None,
                            **kwargs: object) -> Any:
    """Start a ``DataPlaneServer`` (emulated ``link`` or native) and record it in ``servers``."""
    from node_engine.data_plane.server import DataPlaneServer
    from node_engine.emulation import Emulator
    from node_engine.stages import StageRunner

    server = DataPlaneServer(table, StageRunner(Emulator(1.0, link=link)), name=name, **kwargs)  # type: ignore[arg-type]
    server.start()
    servers.append(server)
    return server


# ---------------------------------------------------------------- MQTT: the cluster's side


def mqtt_client(broker: Any, on_message: Callable[..., None] | None = None) -> Any:
    """A connected paho client subscribed to ``nodes/#`` (loop running)."""
    import paho.mqtt.client as mqtt

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    connected = threading.Event()
    client.on_connect = lambda *args: (client.subscribe("nodes/#", qos=1), connected.set())
    if on_message is not None:
        client.on_message = on_message
    client.connect(broker.host, broker.port)
    client.loop_start()
    assert connected.wait(10), "observer could not connect"
    return client


@dataclass
class Observer:
    """The cluster's side of MQTT: records every message per topic; waits with a deadline."""

    client: Any = None
    messages: dict[str, list[bytes]] = field(default_factory=dict)
    cond: threading.Condition = field(default_factory=threading.Condition)

    @classmethod
    def connect(cls, broker: Any) -> Observer:
        observer = cls()
        observer.client = mqtt_client(broker, observer.on_message)
        return observer

    def on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        with self.cond:
            self.messages.setdefault(msg.topic, []).append(bytes(msg.payload))
            self.cond.notify_all()

    def wait_for(self, topic: str, cls: type, predicate: Callable[[Any], bool], timeout: float = DEADLINE) -> Any:
        """The first message on ``topic`` that decodes as ``cls`` and satisfies ``predicate``."""

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

    def seen(self, topic: str, cls: type) -> list[Any]:
        with self.cond:
            return [decode(cls, raw) for raw in self.messages.get(topic, [])]

    def publish(self, topic: str, payload: bytes) -> None:
        assert self.client is not None
        self.client.publish(topic, payload, qos=1).wait_for_publish(5)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def retained_status(broker: Any, node_id: str, timeout: float = DEADLINE) -> NodeStatus:
    """What a late subscriber reads on the node's status topic (the retained message)."""
    got: list[bytes] = []
    arrived = threading.Event()

    def on_message(client: Any, userdata: Any, msg: Any) -> None:
        if msg.topic == topics.status(node_id) and msg.retain:
            got.append(bytes(msg.payload))
            arrived.set()

    client = mqtt_client(broker, on_message)
    try:
        assert arrived.wait(timeout), f"no retained status for {node_id} within {timeout}s"
    finally:
        client.disconnect()
        client.loop_stop()
    return decode(NodeStatus, got[0])


# ---------------------------------------------------------------- stand-in cluster (REST + artifacts)


def serve_cluster(port: int, mqtt_host: str, mqtt_port: int, artifacts: dict[str, bytes],
                  registrations: dict[str, dict[str, Any]], cluster_id: str = "cluster-test",
                  telemetry_interval: float = 0.5) -> Any:
    """A Flask stand-in for a cluster: ``POST /api/node/register`` and ``GET /artifacts/<name>``."""
    from flask import Flask, Response, jsonify, request
    from werkzeug.serving import make_server

    app = Flask("fake-cluster")

    @app.post("/api/node/register")
    def _register() -> Any:
        body = request.get_json()
        registrations[body["name"]] = body
        return jsonify({"node_id": f"node-{body['name']}", "cluster_id": cluster_id, "mqtt_host": mqtt_host,
                        "mqtt_port": mqtt_port, "telemetry_interval": telemetry_interval})

    @app.get("/artifacts/<name>")
    def _artifact(name: str) -> Any:
        data = artifacts.get(name)
        return Response(data, mimetype="application/octet-stream") if data else ("", 404)

    server = make_server("127.0.0.1", port, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@dataclass
class FakeCluster:
    url: str
    registrations: dict[str, dict[str, Any]]
    artifacts: dict[str, bytes]
    server: Any = None

    @classmethod
    def start(cls, broker: Any, artifacts: dict[str, bytes], **kwargs: Any) -> FakeCluster:
        """Serve ``artifacts`` on a free loopback port, pointing nodes at ``broker``."""
        from treeline_common.netutil import free_port

        port, registrations = free_port(), {}
        server = serve_cluster(port, broker.host, broker.port, artifacts, registrations, **kwargs)
        return cls(f"http://127.0.0.1:{port}", registrations, artifacts, server)

    def sha(self, name: str) -> str:
        return hashlib.sha256(self.artifacts[name]).hexdigest()

    def shutdown(self) -> None:
        self.server.shutdown()

    def __enter__(self) -> FakeCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()


# ---------------------------------------------------------------- node engine processes


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


def start_node(cluster_url: str, name: str, tmp: Path, profile: str = "native",
               telemetry_interval: float | None = None) -> NodeProcess:
    """``python -m node_engine`` on one thread, logging to ``tmp/<name>.log``."""
    log = (tmp / f"{name}.log").open("wb")
    cmd = [sys.executable, "-m", "node_engine", "--cluster-url", cluster_url, "--name", name, "--profile", profile]
    if telemetry_interval is not None:
        cmd += ["--telemetry-interval", str(telemetry_interval)]
    cmd += ["--data-dir", str(tmp / name), "--threads", "1"]
    return NodeProcess(name, subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT))


@contextmanager
def node_spawner(tmp: Path, telemetry_interval: float | None = None) -> Iterator[Callable[..., NodeProcess]]:
    """``spawn(cluster_url, name, profile="native")`` starts a node engine (see :func:`start_node`)
    and returns at once; every node it started is killed and reaped on exit."""
    started: list[NodeProcess] = []

    def spawn(cluster_url: str, name: str, profile: str = "native") -> NodeProcess:
        node = start_node(cluster_url, name, tmp, profile, telemetry_interval)
        started.append(node)
        return node

    try:
        yield spawn
    finally:
        for node in started:
            node.stop()


@contextmanager
def running_nodes(cluster_url: str, specs: Iterable[tuple[str, str]], tmp: Path, observer: Observer,
                  telemetry_interval: float | None = None,
                  timeout: float = DEADLINE) -> Iterator[list[NodeProcess]]:
    """Start a node per ``(name, profile)``, wait until each is online; kill and reap them on exit."""
    with node_spawner(tmp, telemetry_interval) as spawn:
        nodes = [spawn(cluster_url, name, profile) for name, profile in specs]
        for node in nodes:
            observer.wait_for(topics.status(node.node_id), NodeStatus, lambda s: s.state == "online", timeout)
        yield nodes


def tiny_mlp(seed: int, input_name: str = "input") -> bytes:
    """``input[1,8] -> MatMul -> Relu -> MatMul -> output[1,4]`` with named nodes (so it can be cut),
    weights drawn from ``seed``: the small model the end-to-end tests deploy."""
    rng = np.random.default_rng(seed)
    w1 = numpy_helper.from_array(rng.standard_normal((8, 16)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.standard_normal((16, 4)).astype(np.float32), "w2")
    nodes = [helper.make_node("MatMul", [input_name, "w1"], ["h"], name="mm1"),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("MatMul", ["r", "w2"], ["output"], name="mm2")]
    return onnx_bytes(nodes, [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, [1, 8])],
                      [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 4])], [w1, w2])


def trainable_onnx() -> bytes:
    """A torch-free model with the digits MLP's signature: x float32 [N, 64] -> logits [N, 10]."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", TRAINABLE_FEATURES])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", TRAINABLE_CLASSES])
    w = helper.make_tensor("w", TensorProto.FLOAT, [TRAINABLE_FEATURES, TRAINABLE_CLASSES],
                           [0.0] * (TRAINABLE_FEATURES * TRAINABLE_CLASSES))
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["logits"])], "mlp", [x], [y],
                              initializer=[w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


# ---------------------------------------------------------------- a whole stack (treeline up, in-process)

@contextmanager
def running_stack(data_dir: Path, timeout: float = 60.0, prepare: Callable[[Any], object] | None = None,
                  **config: Any) -> Iterator[Any]:
    """``start_stack`` of a :class:`~treeline_cli.stack.StackConfig` on free ports, ready, stopped on exit.
    ``prepare(stack)`` runs before the wait (e.g. a scenario's ``add_nodes`` on a stack of ``nodes=0``)."""
    from treeline_cli.stack import StackConfig, pick_ports, start_stack

    running = start_stack(pick_ports(StackConfig(data_dir=data_dir, **config)))
    try:
        if prepare is not None:
            prepare(running)
        running.wait_ready(timeout=timeout)
        yield running
    finally:
        running.stop()


def run_cli(stack: Any, cwd: Path, *argv: str, timeout: float = 120) -> tuple[int, str, list[str]]:
    """``python -m treeline_cli ARGV`` against ``stack`` (no TREELINE_* from this environment):
    ``(exit code, stdout, stderr lines)``."""
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("TREELINE_")}
    env.update(TREELINE_ROOT_URL=stack.root_url, TREELINE_DATA_DIR=str(stack.config.data_dir))
    done = subprocess.run([sys.executable, "-m", "treeline_cli", *argv], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)
    return done.returncode, done.stdout, done.stderr.splitlines()


def fail_fast_bound_s(bound_s: float = 2.0, margin_s: float = 1.0) -> float:
    """How long a ``treeline`` command that must fail at once may take here: ``bound_s`` (the
    documented figure, met on a quiet machine), or a bare ``python -m treeline_cli --version``
    measured now plus ``margin_s`` when the machine is so loaded (other tests running beside this
    one) that starting the interpreter alone takes longer. A command that waits for anything,
    or starts a process, still takes seconds more than the bare start."""
    import time

    started = time.monotonic()
    subprocess.run([sys.executable, "-m", "treeline_cli", "--version"], capture_output=True, timeout=60,
                   check=True)
    return max(bound_s, time.monotonic() - started + margin_s)
