"""Fault-injection harness: a whole stack as real processes, a small model, continuous traffic.

Used by ``tests/integration/test_faults_*.py`` and ``benchmarks/controlplane.py``. Pieces:

- :func:`start_fault_stack`: broker (Mosquitto when installed), root, cluster and node engines
  as separate processes on free loopback ports, with short telemetry / heartbeat intervals;
  the :class:`~treeline_cli.stack.Stack` it returns kills, freezes and restarts any of them
  with their own command lines, and restarts the broker on its own port.
- :func:`chain_model` / :func:`model_stack` / :func:`deploy`: a small ONNX chain, a fault stack
  with it registered at the root (the tests' ``stack`` fixture), and its deployment from an SLA
  (FLOPs-balanced by default, so every node holds a stage and any node fault hits the deployment).
- :class:`Traffic`: a thread sending requests back to back through the data plane's
  ``ServiceClient``, which retries each request (same request id, re-resolving the entry from
  the root) until it answers or its budget runs out; it counts what such a client sees: failed
  requests, failed attempts, wrong answers, and the longest time without any answer.
- Fault injectors beyond the stack's own: :func:`publish_raw` (poison payloads, spoofed
  statuses from another MQTT client).
- Waits: every wait polls with a deadline (:func:`wait_until`), none sleeps for a condition.
- :func:`check_deployments`: no lost and no duplicated deployment: each service RUNNING once at
  the root and at the cluster, and the nodes serve exactly the stage keys of its placement.

Threading: fault injection (kill / restart) must run on the main thread: a child's
parent-death signal fires when the thread that started it exits.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from node_engine.data_plane.client import TensorClient
from node_engine.data_plane.service_client import Outcome, RetryPolicy, ServiceClient
from treeline_cli.broker import mosquitto_binary
from treeline_cli.inference import service_resolver
from treeline_cli.root_client import RootClient
from treeline_cli.stack import Stack, StackConfig, pick_ports, start_stack
from treeline_common.http import call_json
from treeline_common.messages import parse_stage_key

log = logging.getLogger(__name__)

T = TypeVar("T")

TELEMETRY_INTERVAL = 0.5  # s between node telemetry messages in fault stacks
HEARTBEAT_MISSES = 4  # -> a silent node is offline after 2 s
INPUT_NAME, OUTPUT_NAME = "input", "output"


# ---------------------------------------------------------------- waiting


def wait_until(probe: Callable[[], T | None], timeout: float, what: str, interval: float = 0.05) -> T:
    """Poll ``probe`` until it returns something truthy; raise AssertionError naming ``what``
    (and the probe's last error) after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        try:
            result = probe()
            if result:
                return result
        except AssertionError:
            raise
        except Exception as exc:  # noqa: BLE001 - the peer may be down while we wait for it
            last_error = exc
        if time.monotonic() >= deadline:
            suffix = f" (last error: {last_error})" if last_error else ""
            raise AssertionError(f"timed out after {timeout:.1f}s waiting for {what}{suffix}")
        time.sleep(interval)


# ---------------------------------------------------------------- the stack


def start_fault_stack(data_dir: Path, profiles: Sequence[str] = ("server", "server", "server"),
                      *, telemetry_interval: float = TELEMETRY_INTERVAL,
                      heartbeat_misses: int = HEARTBEAT_MISSES,
                      cluster_args: Sequence[str] = ("--profile-timeout", "5", "--stage-timeout", "15"),
                      timeout: float = 60.0, **config: Any) -> Stack:
    """Start a stack owning its broker (so it can be killed and restarted) and wait until every
    node is online. Ports are free ones; ``config`` overrides any other :class:`StackConfig` field."""
    fields: dict[str, Any] = {"push_interval": 2.0, "node_threads": 1, "node_labels": {}, **config}
    stack_config = pick_ports(StackConfig(
        data_dir=data_dir, nodes=len(profiles), profiles=tuple(profiles), mqtt_url=None,
        broker_kind="mosquitto" if mosquitto_binary() else "amqtt", telemetry_interval=telemetry_interval,
        heartbeat_misses=heartbeat_misses, cluster_args=tuple(cluster_args), **fields))
    stack = start_stack(stack_config)
    try:
        stack.wait_ready(timeout=timeout)
    except BaseException:
        stack.stop()
        raise
    return stack


@contextmanager
def fault_stack(data_dir: Path, profiles: Sequence[str] = ("server", "server", "server"),
                **kwargs: Any) -> Iterator[Stack]:
    """:func:`start_fault_stack` as a context manager; every process is stopped on exit."""
    stack = start_fault_stack(data_dir, profiles, **kwargs)
    try:
        yield stack
    finally:
        stack.stop(timeout=5.0)


def nodes(stack: Stack, timeout: float = 2.0) -> dict[str, dict[str, Any]]:
    """The cluster's ``GET /api/nodes`` by node name."""
    body = call_json("GET", f"{stack.cluster_url}/api/nodes", timeout=timeout)
    return {n["name"]: n for n in body["nodes"]}


def node_id(stack: Stack, name: str) -> str:
    return str(nodes(stack)[name]["node_id"])


def node_name(stack: Stack, node: str) -> str:
    """The name of the node whose id is ``node`` (the inverse of :func:`node_id`)."""
    return next(name for name, doc in nodes(stack).items() if doc["node_id"] == node)


def wait_node_online(stack: Stack, name: str, online: bool, timeout: float) -> float:
    """Seconds until the cluster's API shows node ``name`` online (or offline)."""
    start = time.monotonic()
    wait_until(lambda: nodes(stack).get(name, {}).get("online") is online, timeout,
               f"node {name} to be {'online' if online else 'offline'} in GET /api/nodes")
    return time.monotonic() - start


def log_tails(stack: Stack, lines: int = 40) -> str:
    """The last lines of every process log, for a failing test's message."""
    from treeline_cli.stack import tail

    parts = [f"--- {m.name} (pid {m.pid}, alive {m.alive()})\n{tail(m.log_path, lines)}"
             for m in stack.processes]
    if stack.broker is not None:
        parts.append(f"--- broker\n{tail(stack.broker.log_path, 10)}")
    return "\n".join(parts)


# ---------------------------------------------------------------- model and deployments


def chain_model(width: int = 32, layers: int = 4, seed: int = 0) -> bytes:
    """input[1,width] -> (MatMul -> Relu) x layers -> MatMul -> output[1,4]: small, many cut points."""
    rng = np.random.default_rng(seed)
    nodes_: list[Any] = []
    inits: list[Any] = []
    current = INPUT_NAME
    for i in range(layers):
        weights = rng.standard_normal((width, width)).astype(np.float32) / width
        inits.append(numpy_helper.from_array(weights, f"w{i}"))
        nodes_ += [helper.make_node("MatMul", [current, f"w{i}"], [f"m{i}"], name=f"mm{i}"),
                   helper.make_node("Relu", [f"m{i}"], [f"r{i}"], name=f"relu{i}")]
        current = f"r{i}"
    inits.append(numpy_helper.from_array(rng.standard_normal((width, 4)).astype(np.float32), "wout"))
    nodes_.append(helper.make_node("MatMul", [current, "wout"], [OUTPUT_NAME], name="mmout"))
    graph = helper.make_graph(nodes_, "fault-chain",
                              [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, [1, width])],
                              [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, [1, 4])],
                              initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def model_sla(app_name: str, model_name: str, input_shape: Sequence[int], *, max_partitions: int = 3,
              scheduler_profile: str | None = "flops-balanced", objective: str = "latency") -> dict[str, Any]:
    """A one-microservice SLA v2.0 document deploying ``model_name`` (latest version)."""
    model: dict[str, Any] = {"name": model_name, "version": "latest",
                             "input": {"name": INPUT_NAME, "shape": list(input_shape), "dtype": "float32"},
                             "objective": objective, "max_partitions": max_partitions, "variants": ["fp32"],
                             "accuracy_floor": 0.0}
    if scheduler_profile:
        model["scheduler_profile"] = scheduler_profile
    microservice = {"microserviceID": "", "microservice_name": "svc", "microservice_namespace": "faults",
                    "virtualization": "ml-model", "memory": 64, "vcpus": 1, "vgpus": 0, "vtpus": 0,
                    "bandwidth_in": 0, "bandwidth_out": 0, "storage": 0, "state": "", "added_files": [],
                    "model": model, "constraints": [], "connectivity": []}
    return {"sla_version": "v2.0", "customerID": "Admin",
            "applications": [{"applicationID": "", "application_name": app_name,
                              "application_namespace": "faults", "application_desc": "fault-injection test",
                              "microservices": [microservice]}]}


@dataclass
class Deployment:
    """One deployed service, as the root knows it."""

    root: RootClient
    service_id: str
    application_id: str
    instance: int
    submitted_at: float
    running_at: float = 0.0

    def doc(self) -> dict[str, Any]:
        return self.root.service(self.service_id)

    def placement(self) -> dict[str, Any]:
        return self.doc().get("placement") or {}

    def at_cluster(self, stack: Stack) -> dict[str, Any]:
        """The cluster's own view (``GET /api/deployments/<service>/<instance>``)."""
        url = f"{stack.cluster_url}/api/deployments/{self.service_id}/{self.instance}"
        return call_json("GET", url, timeout=2)


def register_model(stack: Stack, name: str, data: bytes) -> dict[str, Any]:
    return RootClient(stack.root_url).register_model(name, data)


@contextmanager
def model_stack(data_dir: Path, model: bytes, name: str = "chain",
                profiles: Sequence[str] = ("server", "server", "server"), **kwargs: Any) -> Iterator[Stack]:
    """:func:`fault_stack` with ``model`` registered at the root as ``name``: the ``stack`` fixture
    of the fault tests. The processes' log tails are printed on the way out; pytest shows them
    only for a failing test."""
    with fault_stack(data_dir, profiles, **kwargs) as running:
        register_model(running, name, model)
        yield running
        print(log_tails(running))


def submit(stack: Stack, sla: dict[str, Any]) -> Deployment:
    """Create the SLA's (single) service at the root and ask for one instance; does not wait."""
    root = RootClient(stack.root_url)
    [application] = root.submit_sla(sla)
    [service_id] = application["microservices"]
    submitted = time.monotonic()
    answer = root.deploy_service(service_id)
    return Deployment(root, service_id, str(application.get("applicationID") or application.get("_id", "")),
                      int(answer.get("instance", 0)), submitted)


def deploy(stack: Stack, sla: dict[str, Any], timeout: float = 60.0) -> Deployment:
    """:func:`submit` and wait until the service is RUNNING."""
    deployment = submit(stack, sla)
    deployment.root.wait_deployed(deployment.service_id, timeout=timeout, interval=0.05)
    deployment.running_at = time.monotonic()
    return deployment


def status(deployment: Deployment) -> str:
    return str(deployment.doc().get("status"))


def wait_status(deployment: Deployment, wanted: str | Iterable[str], timeout: float) -> dict[str, Any]:
    """The service document once its status is ``wanted`` (one word or several)."""
    words = {wanted} if isinstance(wanted, str) else set(wanted)
    seen: list[str] = []

    def probe() -> dict[str, Any] | None:
        doc = deployment.doc()
        if not seen or seen[-1] != doc.get("status"):
            seen.append(str(doc.get("status")))
        return doc if doc.get("status") in words else None

    try:
        return wait_until(probe, timeout, f"service {deployment.service_id} to be {'/'.join(sorted(words))}")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; statuses seen: {' -> '.join(seen)}") from None


def stage_nodes(placement: Mapping[str, Any]) -> set[str]:
    """Node ids holding a stage (relay entry included) of ``placement``."""
    held = {str(s["node_id"]) for s in placement.get("stages", [])}
    entry = placement.get("entry") or {}
    if entry.get("node_id"):
        held.add(str(entry["node_id"]))
    return held


def placement_keys(placement: Mapping[str, Any]) -> dict[str, set[str]]:
    """Stage keys per node id that ``placement`` asks the nodes to serve."""
    keys: dict[str, set[str]] = {}
    for stage in placement.get("stages", []):
        keys.setdefault(str(stage["node_id"]), set()).add(str(stage["stage_key"]))
    relay = placement.get("relay") or placement.get("relay_stage")
    if isinstance(relay, Mapping) and relay.get("node_id") and relay.get("stage_key"):
        keys.setdefault(str(relay["node_id"]), set()).add(str(relay["stage_key"]))
    return keys


def served_keys(stack: Stack, deployment_id: str) -> dict[str, set[str]]:
    """Stage keys of ``deployment_id`` each online node reports serving (telemetry ``stages``)."""
    served: dict[str, set[str]] = {}
    for node in nodes(stack).values():
        if not node.get("online"):
            continue
        for key in (node.get("telemetry") or {}).get("stages") or []:
            try:
                dep, _, _ = parse_stage_key(str(key))
            except ValueError:
                continue
            if dep == deployment_id:
                served.setdefault(str(node["node_id"]), set()).add(str(key))
    return served


def deployment_id_of(deployment: Deployment) -> str:
    """The cluster's deployment id, read from the placement's stage keys."""
    stages = deployment.placement().get("stages") or []
    if not stages:
        raise AssertionError(f"service {deployment.service_id} has no placement")
    return parse_stage_key(str(stages[0]["stage_key"]))[0]


def check_deployments(stack: Stack, deployments: Sequence[Deployment], timeout: float = 20.0) -> None:
    """Assert no lost and no duplicated deployment.

    Lost: a service that is not RUNNING at the root (within ``timeout``), or that the cluster
    no longer knows. Duplicated: a service with more than one instance at the root, more
    applications at the root than were submitted, or (once settled, within ``timeout``) nodes
    serving stage keys of the deployment that its current placement does not name (a stale
    generation still loaded, a stage served twice) or missing one it names.
    """
    root = RootClient(stack.root_url)
    for deployment in deployments:
        doc = wait_status(deployment, "RUNNING", timeout)
        instances = doc.get("instances") or []
        assert len(instances) <= 1, f"service {deployment.service_id} has {len(instances)} instances"
        dep_id = deployment_id_of(deployment)

        def settled(deployment: Deployment = deployment, dep_id: str = dep_id) -> bool:
            wanted = placement_keys(deployment.placement())
            return served_keys(stack, dep_id) == wanted

        try:
            wait_until(settled, timeout, f"nodes to serve exactly the placement of {deployment.service_id}")
        except AssertionError:
            raise AssertionError(
                f"service {deployment.service_id}: nodes serve {served_keys(stack, dep_id)}, placement names "
                f"{placement_keys(deployment.placement())}") from None
    submitted_apps = {d.application_id for d in deployments}
    apps = root.applications()
    ours = [a for a in apps if (a.get("applicationID") or a.get("_id")) in submitted_apps]
    assert len(ours) == len(submitted_apps), f"applications lost or duplicated: {ours}"


# ---------------------------------------------------------------- traffic


@dataclass
class TrafficReport:
    """What a retrying client saw. Times are ``time.monotonic()`` values."""

    ok: int = 0
    failed: int = 0  # logical requests that never answered within their retry budget
    attempt_errors: int = 0  # individual attempts that failed (timeouts, error replies)
    wrong: int = 0  # answers that differ from the whole model's output
    retried: int = 0  # logical requests that needed more than one attempt
    successes: list[float] = field(default_factory=list)
    errors: list[tuple[float, str]] = field(default_factory=list)
    started_at: float = 0.0
    stopped_at: float = 0.0

    def longest_gap(self, since: float = 0.0) -> float:
        """Longest time without an answer after ``since`` (from ``since`` to the last stop)."""
        points = [since] + [t for t in self.successes if t > since] + [self.stopped_at]
        return max(b - a for a, b in itertools.pairwise(points)) if len(points) > 1 else 0.0

    def first_success_after(self, since: float) -> float | None:
        return next((t for t in self.successes if t >= since), None)

    def summary(self) -> dict[str, Any]:
        out = {k: v for k, v in dataclasses.asdict(self).items() if k not in ("successes", "errors")}
        out["last_errors"] = [e for _, e in self.errors[-5:]]
        return out


class Traffic:
    """Sends requests one after another on a background thread until :meth:`stop`.

    The client is the data plane's :class:`ServiceClient`: it resolves the service's entry from
    the root and retries a request (same request id, re-resolving the entry) until it answers
    or ``budget_s`` passes; a request that never answers is ``failed``. Answers are compared
    with the whole model's output (``wrong`` when they differ).
    """

    def __init__(self, root_url: str, service_id: str, model: bytes, *, attempt_timeout: float = 1.0,
                 budget_s: float = 10.0, pause_s: float = 0.0, samples: int = 8) -> None:
        self.resolve = service_resolver(root_url, service_id)
        self.service_id = service_id
        self.policy = RetryPolicy(deadline=budget_s, attempt_timeout=attempt_timeout, backoff_cap=0.5,
                                  resolve_interval=0.1)
        self.budget_s = budget_s
        self.pause_s = pause_s
        self.report = TrafficReport()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="traffic", daemon=True)
        self._samples = _samples(model, samples)
        self._lock = threading.Lock()

    def start(self) -> Traffic:
        self.report.started_at = time.monotonic()
        self._thread.start()
        return self

    def stop(self) -> TrafficReport:
        self._stop.set()
        self._thread.join(self.budget_s + 5)
        self.report.stopped_at = time.monotonic()
        return self.report

    def __enter__(self) -> Traffic:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def wait_answers(self, n: int, timeout: float) -> None:
        """Wait until ``n`` more answers than now have come back."""
        target = self.report.ok + n
        wait_until(lambda: self.report.ok >= target, timeout,
                   f"{n} answers from the traffic generator (so far: {self.report.summary()})")

    def _run(self) -> None:
        index = 0
        with ServiceClient(self.resolve, service=self.service_id, policy=self.policy) as client:
            while not self._stop.is_set():
                inputs, expected = self._samples[index % len(self._samples)]
                index += 1
                [outcome] = client.infer_many([inputs], max_in_flight=1)
                self._count(outcome, expected)
                if self.pause_s:
                    self._stop.wait(self.pause_s)

    def _count(self, outcome: Outcome, expected: np.ndarray) -> None:
        now = time.monotonic()
        with self._lock:
            report = self.report
            if outcome.error is not None:
                report.failed += 1
                report.attempt_errors += outcome.attempts
                report.errors.append((now, str(outcome.error)))
                return
            report.attempt_errors += outcome.attempts - 1
            if outcome.attempts > 1:
                report.retried += 1
            got = outcome.outputs.get(OUTPUT_NAME)
            if got is not None and got.shape == expected.shape and np.allclose(got, expected, atol=1e-4,
                                                                               rtol=1e-4):
                report.ok += 1
                report.successes.append(now)
            else:
                report.wrong += 1
                report.errors.append((now, "wrong answer"))


def _samples(model: bytes, n: int) -> list[tuple[dict[str, np.ndarray], np.ndarray]]:
    """``n`` random inputs of the model's input shape with the whole model's outputs."""
    import onnx
    import onnxruntime as ort

    proto = onnx.load_from_string(model)
    shape = [d.dim_value or 1 for d in proto.graph.input[0].type.tensor_type.shape.dim]
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(1)
    out = []
    for _ in range(n):
        sample = {INPUT_NAME: rng.standard_normal(shape).astype(np.float32)}
        out.append((sample, session.run([OUTPUT_NAME], sample)[0]))
    return out


def probe_answers(deployment: Deployment, model_samples: list[tuple[dict[str, np.ndarray], np.ndarray]],
                  timeout: float = 2.0) -> bool:
    """One request to the current entry answers correctly."""
    entry = deployment.placement().get("entry") or {}
    if not entry.get("endpoint"):
        return False
    inputs, expected = model_samples[0]
    with TensorClient(str(entry["endpoint"])) as client:
        outputs, _ = client.infer(str(entry["stage_key"]), inputs, timeout=timeout)
    return bool(np.allclose(outputs[OUTPUT_NAME], expected, atol=1e-4, rtol=1e-4))


def samples(model: bytes, n: int = 4) -> list[tuple[dict[str, np.ndarray], np.ndarray]]:
    return _samples(model, n)


def wait_recovered(deployment: Deployment, since: float, without: Iterable[str] = (), timeout: float = 30.0,
                   model_samples: list[tuple[dict[str, np.ndarray], np.ndarray]] | None = None) -> float:
    """Seconds from ``since`` until the service is RUNNING on a placement that uses none of the
    node ids ``without`` and (with ``model_samples``) answers a request correctly."""
    excluded = set(without)
    history: list[str] = []

    def recovered() -> bool:
        doc = deployment.doc()
        placement = doc.get("placement") or {}
        word = f"{doc.get('status')} ({doc.get('status_detail') or ''})"
        if not history or history[-1] != word:
            history.append(word)
        if doc.get("status") != "RUNNING" or stage_nodes(placement) & excluded:
            return False
        return probe_answers(deployment, model_samples) if model_samples else True

    try:
        wait_until(recovered, timeout,
                   f"service {deployment.service_id} RUNNING again without {sorted(excluded)}")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; root saw: {' -> '.join(history)}") from None
    return time.monotonic() - since


# ---------------------------------------------------------------- MQTT fault injection


def login_as_cluster(stack: Stack, client: Any) -> None:
    """Give a paho client the cluster's MQTT identity when the stack's broker enforces identities."""
    if stack.mqtt_username:
        client.username_pw_set(stack.mqtt_username, stack.mqtt_password)


def join_headers(stack: Stack) -> dict[str, str]:
    """Headers a node registration needs at this stack's cluster (its join token)."""
    return {"Authorization": f"Bearer {stack.join_token}"} if stack.join_token else {}


def publish_raw(stack: Stack, topic: str, payload: bytes, *, retain: bool = False) -> None:
    """Publish ``payload`` as another MQTT client would (QoS 1; waits for the broker's ack)."""
    import paho.mqtt.client as mqtt

    assert stack.broker is not None, "fault stacks own their broker"
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"fault-injector-{time.monotonic_ns()}")
    login_as_cluster(stack, client)  # the broker refuses anonymous clients; the cluster may publish anywhere
    client.connect(stack.broker.host, stack.broker.port)
    client.loop_start()
    try:
        client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(5)
    finally:
        client.disconnect()
        client.loop_stop()


def retained(stack: Stack, topic: str, timeout: float = 5.0) -> bytes | None:
    """The retained message on ``topic`` (None if there is none within ``timeout``)."""
    import paho.mqtt.client as mqtt

    assert stack.broker is not None
    got: list[bytes] = []
    event = threading.Event()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)

    def on_message(_c: Any, _u: Any, msg: Any) -> None:
        if msg.retain:
            got.append(bytes(msg.payload))
        event.set()

    client.on_connect = lambda c, *a: c.subscribe(topic, qos=1)
    client.on_message = on_message
    login_as_cluster(stack, client)
    client.connect(stack.broker.host, stack.broker.port)
    client.loop_start()
    try:
        event.wait(timeout)
    finally:
        client.disconnect()
        client.loop_stop()
    return got[0] if got else None


def nested_json(depth: int) -> bytes:
    """A JSON document nested ``depth`` lists deep (``json.loads`` raises RecursionError on it)."""
    return b"[" * depth + b"]" * depth


def telemetry_body(node: str, **overrides: Any) -> dict[str, Any]:
    """A valid NodeTelemetry body (schema v1) for ``node``; ``overrides`` replace fields."""
    body: dict[str, Any] = {"v": 1, "node_id": node, "ts": time.time(), "cpu_percent": 10.0, "cpu_count": 2,
                            "memory_percent": 20.0, "memory_total_mb": 8192, "memory_available_mb": 4096,
                            "memory_limit_mb": 4096, "profile": "server", "emulated": True,
                            "speed_factor": 1.0,
                            "accelerators": [], "battery": None, "stages": [], "seq": 0}
    body.update(overrides)
    return body


def encode_json(body: Any) -> bytes:
    return json.dumps(body).encode()


# ---------------------------------------------------------------- measured figures


def record(scenario: str, **figures: Any) -> dict[str, Any]:
    """Log a scenario's measured figures (recovery time, failed requests...) as one JSON line,
    also appended to the file named by ``TREELINE_FAULT_METRICS`` when set."""
    import os

    line = json.dumps({"scenario": scenario, **figures}, default=str, sort_keys=True)
    print(f"FAULT-METRICS {line}")
    path = os.environ.get("TREELINE_FAULT_METRICS")
    if path:
        with open(path, "a") as out:
            out.write(line + "\n")
    return figures
