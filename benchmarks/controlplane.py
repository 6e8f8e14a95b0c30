"""Control-plane benchmark: failure detection, recovery and ingest, measured on real processes.

Run ``python -m benchmarks.controlplane [--quick] [--json PATH]``. Prints a table and writes
JSON (default ``benchmarks/results/controlplane.json``). Every figure comes from a real broker
(Mosquitto when installed), root, cluster orchestrator and node engines, each its own process
on loopback ports, faults injected with SIGKILL / SIGSTOP. Requests go through the data
plane's ``ServiceClient`` (it re-resolves the entry at the root and retries with the same
request id). Goals in brackets.

- ``telemetry_msgs_per_s`` [>= 5000]: one cluster orchestrator fed by a load generator that
  publishes real ``NodeTelemetry`` payloads (QoS 1) for ``telemetry_nodes`` nodes registered
  over REST, never more than a bounded window ahead of what the cluster has applied (read
  back from its ``GET /api/nodes``), so nothing is dropped on the way; messages applied / s.
- ``detect_offline_s_p50`` [<= 1]: SIGKILL a node (its broker sends the last will), time until
  the cluster's ``GET /api/nodes`` shows it offline.
- ``detect_offline_heartbeat_s_p50`` [<= 7]: SIGSTOP a node (no will: its session stays up),
  same clock; the stack's default telemetry interval (2 s) and 3 missed heartbeats.
- ``recover_s_p50`` [<= 3]: MobileNetV2 in 3 partitions on 3 nodes under continuous traffic;
  SIGKILL the node of the entry stage, time until the service is RUNNING on the other nodes
  and a request to its new entry answers. ``failed_requests_during_recovery`` [0]: requests
  the retrying client never got an answer for (each has a 10 s budget), over all kills.
- ``broker_outage_lost_deployments`` [0]: the broker is SIGKILLed and restarted on its port
  after ``broker_outage_s`` (3 s; the full run adds 30 s): deployments not RUNNING 20 s after
  the restart. Also nodes the cluster declared offline meanwhile and failed requests.
- ``replan_after_join_s`` [<= 5]: the tiny model runs on two emulated Raspberry Pis; a server
  node joins; time from the node shown online until the deployment RUNNING on a plan that
  uses it (make-before-break), with the failed requests meanwhile.
- ``deploy_to_first_answer_s`` [< 3]: MobileNetV2 split in 3 partitions over the 3 nodes
  (FLOPs-balanced profile), from the root's ``POST .../instance`` to the first answer, with
  the model's per-device profiles already measured; ``..._cold_s`` is the first deployment
  of a newly registered version (it includes on-device profiling), ``..._planner_s`` the
  example SLA as it is (the exact planner).
"""

from __future__ import annotations

import itertools
import logging
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import paho.mqtt.client as mqtt

import model_zoo
from benchmarks.report import add_json_option, benchmark_parser, report
from deployment_descriptors import example_sla
from node_engine.data_plane.client import TensorClient
from node_engine.data_plane.service_client import RetryPolicy, ServiceClient
from treeline_cli.broker import mosquitto_binary
from treeline_cli.inference import random_inputs, service_resolver
from treeline_cli.root_client import RootClient
from treeline_cli.stack import Stack, StackConfig, default_data_dir, pick_ports, start_stack
from treeline_common.http import call_json
from treeline_common.messages import NodeTelemetry, encode
from treeline_common.netutil import poll_until
from treeline_common.topics import information

log = logging.getLogger(__name__)

T = TypeVar("T")
GOALS = {"telemetry_msgs_per_s": ">= 5000", "detect_offline_s_p50": "<= 1",
         "detect_offline_heartbeat_s_p50": "<= 7", "recover_s_p50": "<= 3",
         "failed_requests_during_recovery": "0", "broker_outage_lost_deployments": "0",
         "replan_after_join_s": "<= 5", "deploy_to_first_answer_s": "< 3"}
ROUND_MARK, ROUND_TS_MARK = 987654321, 1234567890.125  # placeholders in the telemetry templates
TINY_INPUT = {"name": "input", "shape": [1, 3, 16, 16], "dtype": "float32"}


# ---------------------------------------------------------------- stacks and waiting


@contextmanager
def running_stack(profiles: Sequence[str], **config: Any) -> Iterator[Stack]:
    """A stack that owns its broker, every node online; stopped on exit."""
    with tempfile.TemporaryDirectory(prefix="treeline-controlplane-") as tmp:
        stack = start_stack(pick_ports(StackConfig(
            data_dir=Path(tmp), nodes=len(profiles), profiles=tuple(profiles), node_labels={}, node_threads=1,
            broker_kind="mosquitto" if mosquitto_binary() else "amqtt", **config)))
        try:
            stack.wait_ready(timeout=90)
            yield stack
        finally:
            stack.stop(timeout=5)


def wait(probe: Callable[[], T | None], timeout: float, what: str) -> T:
    return poll_until(probe, timeout, interval=0.02, what=what)


def nodes(stack: Stack) -> dict[str, dict[str, Any]]:
    """The cluster's ``GET /api/nodes`` by node name."""
    return {n["name"]: n for n in call_json("GET", f"{stack.cluster_url}/api/nodes", timeout=5)["nodes"]}


def wait_online(stack: Stack, name: str, online: bool, timeout: float) -> float:
    start = time.monotonic()
    wait(lambda: nodes(stack).get(name, {}).get("online") is online, timeout,
         f"{name} {'online' if online else 'offline'} at the cluster")
    return time.monotonic() - start


def p50(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


# ---------------------------------------------------------------- deployments and traffic


def submit(root: RootClient, sla: dict[str, Any]) -> str:
    [application] = root.submit_sla(sla)
    [service_id] = application["microservices"]
    root.deploy_service(service_id)
    return str(service_id)


def first_answer(root_url: str, service_id: str, inputs: Mapping[str, np.ndarray], timeout: float) -> None:
    """Block until one request to the service answers (the client waits out resolving too)."""
    policy = RetryPolicy(deadline=timeout, attempt_timeout=2.0, backoff_cap=0.2, resolve_interval=0.05)
    with ServiceClient(service_resolver(root_url, service_id), service=service_id, policy=policy) as client:
        client.infer(inputs)


def placement_nodes(doc: Mapping[str, Any]) -> set[str]:
    placement = doc.get("placement") or {}
    held = {str(s["node_id"]) for s in placement.get("stages", [])}
    entry = placement.get("entry") or {}
    return held | ({str(entry["node_id"])} if entry.get("node_id") else set())


def answers(doc: Mapping[str, Any], inputs: Mapping[str, np.ndarray]) -> bool:
    entry = (doc.get("placement") or {}).get("entry") or {}
    with TensorClient(str(entry["endpoint"])) as client:
        client.infer(str(entry["stage_key"]), inputs, timeout=3.0)
    return True


class Load:
    """Requests one after another through a ServiceClient on a thread; counts what it sees."""

    def __init__(self, root_url: str, service_id: str, inputs: Mapping[str, np.ndarray],
                 budget_s: float = 10.0) -> None:
        self.policy = RetryPolicy(deadline=budget_s, attempt_timeout=1.5, backoff_cap=0.5,
                                  resolve_interval=0.1)
        self.resolve = service_resolver(root_url, service_id)
        self.service_id = service_id
        self.inputs = inputs
        self.ok = self.failed = self.attempt_errors = 0
        self.successes: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Load:
        self._thread.start()
        wait(lambda: self.ok >= 5, 30, f"first answers from {self.service_id}")
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(self.policy.deadline + 5)

    def _run(self) -> None:
        with ServiceClient(self.resolve, service=self.service_id, policy=self.policy) as client:
            while not self._stop.is_set():
                [outcome] = client.infer_many([self.inputs], max_in_flight=1)
                if outcome.ok:
                    self.ok += 1
                    self.attempt_errors += outcome.attempts - 1
                    self.successes.append(time.monotonic())
                else:
                    self.failed += 1
                    self.attempt_errors += outcome.attempts
                    log.warning("request failed: %s", outcome.error)

    def longest_gap(self, since: float) -> float:
        points = [since, *(t for t in self.successes if t > since), time.monotonic()]
        return max(b - a for a, b in itertools.pairwise(points))


# ---------------------------------------------------------------- scenarios


def telemetry_ingest(n_nodes: int, duration_s: float) -> dict[str, Any]:
    """Messages per second one cluster orchestrator applies (see the module docstring)."""
    with running_stack(()) as stack:
        ids = [call_json("POST", f"{stack.cluster_url}/api/node/register", json={
            "name": f"load-{i}", "profile": "server", "arch": "x86_64", "cpu_count": 4,
            "memory_limit_mb": 4096, "speed_factor": 1.0, "data_endpoint": f"tcp://127.0.0.1:{20000 + i}",
        }, headers={"Authorization": f"Bearer {stack.join_token}"} if stack.join_token else None)["node_id"]
            for i in range(n_nodes)]
        assert stack.broker is not None
        # one multiplexed connection publishing for every simulated node: it logs in as the cluster,
        # the only identity the ACL lets publish under every node's prefix
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="telemetry-load")
        if stack.mqtt_username:
            client.username_pw_set(stack.mqtt_username, stack.mqtt_password)
        client.max_inflight_messages_set(1000)
        client.connect(stack.broker.host, stack.broker.port)
        client.loop_start()

        # Real NodeTelemetry payloads, encoded once per node; each round only changes the round
        # number (carried in memory_available_mb) and the timestamp, so the generator's own CPU
        # use (two cores are shared with the cluster and the broker) stays small.
        templates = {node_id: encode(NodeTelemetry(
            node_id=node_id, ts=ROUND_TS_MARK, cpu_percent=12.5, cpu_count=4, memory_percent=40.0,
            memory_total_mb=1 << 30, memory_available_mb=ROUND_MARK, memory_limit_mb=4096, profile="server",
        )).replace(str(ROUND_MARK).encode(), b"%d").replace(repr(ROUND_TS_MARK).encode(), b"%.3f")
            for node_id in ids}
        assert all(t.index(b"%.3f") < t.index(b"%d") for t in templates.values())  # ts comes first

        def publish_round(number: int) -> None:
            now = time.time()
            for node_id, template in templates.items():
                client.publish(information(node_id), template % (now, number), qos=1)

        def applied_round() -> int:
            rounds = [int((n.get("telemetry") or {}).get("memory_available_mb", -1))
                      for name, n in nodes(stack).items() if name.startswith("load-")]
            return min(rounds) if len(rounds) == n_nodes else -1

        try:
            publish_round(0)  # first contact brings each node online: not part of the steady state
            wait(lambda: applied_round() >= 0, 60, "the first telemetry of every load node")
            window = max(2, 4000 // n_nodes)  # rounds in flight: well under the broker's queue limit
            start, sent, applied = time.monotonic(), 0, 0
            while time.monotonic() - start < duration_s:
                if sent - applied >= window:
                    time.sleep(0.05)  # a GET /api/nodes of every load node costs the cluster too
                    applied = applied_round()
                    continue
                sent += 1
                publish_round(sent)
            wait(lambda: applied_round() >= sent, 120, "the cluster to apply every message")
            elapsed = time.monotonic() - start
        finally:
            client.disconnect()
            client.loop_stop()
    return {"telemetry_msgs_per_s": sent * n_nodes / elapsed, "telemetry_nodes": n_nodes,
            "telemetry_messages": sent * n_nodes}


def detect_offline(stack: Stack, victims: Sequence[str], freeze: bool) -> list[float]:
    """Seconds from SIGKILL (or SIGSTOP) of each victim until the cluster shows it offline."""
    samples = []
    for victim in victims:
        process = f"node-{victim}"
        started = time.monotonic()
        if freeze:
            stack.freeze(process)
        else:
            stack.kill(process)
        wait_online(stack, victim, False, 30)
        samples.append(time.monotonic() - started)
        if freeze:
            stack.thaw(process)
        else:
            stack.restart(process)
        wait_online(stack, victim, True, 30)
    return samples


def deploy_to_first_answer(stack: Stack, root: RootClient, sla: dict[str, Any],
                           inputs: Mapping[str, np.ndarray]) -> tuple[str, float]:
    started = time.monotonic()
    service_id = submit(root, sla)
    first_answer(stack.root_url, service_id, inputs, timeout=120)
    return service_id, time.monotonic() - started


def recover_after_kill(stack: Stack, root: RootClient, service_id: str, inputs: Mapping[str, np.ndarray],
                       kills: int) -> dict[str, Any]:
    samples = []
    with Load(stack.root_url, service_id, inputs) as load:
        for _ in range(kills):
            doc = root.service(service_id)
            victim_id = str(doc["placement"]["entry"]["node_id"])
            victim = next(name for name, n in nodes(stack).items() if n["node_id"] == victim_id)
            killed_at = time.monotonic()
            stack.kill(f"node-{victim}")

            def recovered(victim_id: str = victim_id) -> bool:
                now = root.service(service_id)
                return (now.get("status") == "RUNNING" and victim_id not in placement_nodes(now)
                        and answers(now, inputs))

            wait(recovered, 60, f"{service_id} RUNNING without {victim}")
            samples.append(time.monotonic() - killed_at)
            gap = load.longest_gap(killed_at)
            stack.restart(f"node-{victim}")
            wait_online(stack, victim, True, 30)
            log.info("kill %s: recovered in %.2f s, longest gap without an answer %.2f s", victim,
                     samples[-1], gap)
    return {"recover_s_p50": p50(samples), "recover_s_max": max(samples), "recover_s_samples": samples,
            "failed_requests_during_recovery": load.failed,
            "failed_attempts_during_recovery": load.attempt_errors,
            "requests_during_recovery": load.ok + load.failed}


def broker_outage(stack: Stack, root: RootClient, services: Sequence[str], inputs: Mapping[str, np.ndarray],
                  outage_s: float) -> dict[str, Any]:
    declared_offline: set[str] = set()
    stop = threading.Event()

    def watch() -> None:
        while not stop.wait(0.1):
            try:
                declared_offline.update(name for name, n in nodes(stack).items() if not n["online"])
            except Exception:  # noqa: BLE001 - keep watching
                continue

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    with Load(stack.root_url, services[0], inputs) as load:
        stack.kill_broker()
        time.sleep(outage_s)  # the outage itself
        stack.restart_broker()
        restarted = time.monotonic()
        interval = stack.config.telemetry_interval
        def fresh(node: Mapping[str, Any]) -> bool:
            sent = float((node.get("telemetry") or {}).get("ts") or 0)
            return bool(node["online"]) and time.time() - sent < 2 * interval

        wait(lambda: all(fresh(n) for n in nodes(stack).values()), 60,
             "telemetry from every node after the restart")
        reconnect_s = time.monotonic() - restarted
        deadline = time.monotonic() + 20
        while True:
            lost = [s for s in services if root.service(s).get("status") != "RUNNING"]
            if not lost or time.monotonic() > deadline:
                break
            time.sleep(0.1)
    stop.set()
    watcher.join(5)
    key = f"broker_outage_{outage_s:.0f}s"
    return {f"{key}_lost_deployments": len(lost), f"{key}_nodes_declared_offline": len(declared_offline),
            f"{key}_failed_requests": load.failed, f"{key}_reconnect_s": reconnect_s}


def replan_after_join(joins: int) -> dict[str, Any]:
    samples: list[float] = []
    with running_stack(("rpi4", "rpi4")) as stack:
        root = RootClient(stack.root_url)
        root.register_model("tiny_dag", model_zoo.build_onnx("tiny_dag"))
        sla = example_sla("mobilenet_v2", "join", name="tiny_dag", input=TINY_INPUT, max_partitions=1)
        inputs = next(random_inputs(TINY_INPUT, 1, seed=0))
        service_id = submit(root, sla)
        root.wait_deployed(service_id, timeout=60, interval=0.05)
        with Load(stack.root_url, service_id, inputs) as load:
            for index in range(joins):
                if index == 0:
                    stack.add_node("server", name="server-1")
                else:
                    stack.restart("node-server-1")
                wait_online(stack, "server-1", True, 30)
                joined = time.monotonic()
                server_id = nodes(stack)["server-1"]["node_id"]

                def moved(server_id: str = server_id) -> bool:
                    doc = root.service(service_id)
                    return doc.get("status") == "RUNNING" and server_id in placement_nodes(doc)

                wait(moved, 60, "the deployment to move onto the joining server")
                samples.append(time.monotonic() - joined)
                if index + 1 < joins:  # leave again: the deployment goes back to a Pi
                    stack.kill("node-server-1")

                    def back(server_id: str = server_id) -> bool:
                        doc = root.service(service_id)
                        return doc.get("status") == "RUNNING" and server_id not in placement_nodes(doc)

                    wait(back, 60, "the deployment back on a Pi")
        return {"replan_after_join_s": p50(samples), "replan_after_join_s_samples": samples,
                "failed_requests_during_join": load.failed,
                "failed_attempts_during_join": load.attempt_errors}


def run(quick: bool = False) -> dict[str, Any]:
    reps = 3 if quick else 7
    result: dict[str, Any] = {"mode": "quick" if quick else "full", "cpu_count": os.cpu_count(),
                              "goals": GOALS}
    log.info("telemetry ingest")
    result.update(telemetry_ingest(n_nodes=100 if quick else 500, duration_s=5.0 if quick else 15.0))
    log.info("join and re-plan")
    result.update(replan_after_join(1 if quick else 3))
    with running_stack(("server", "jetson-nano", "rpi4")) as stack:
        names = stack.node_names
        log.info("failure detection")
        will = detect_offline(stack, [names[i % len(names)] for i in range(reps)], freeze=False)
        frozen = [names[i % len(names)] for i in range(2 if quick else 5)]
        heartbeat = detect_offline(stack, frozen, freeze=True)
        result.update({"detect_offline_s_p50": p50(will), "detect_offline_s_samples": will,
                       "detect_offline_heartbeat_s_p50": p50(heartbeat),
                       "detect_offline_heartbeat_s_samples": heartbeat})

        log.info("MobileNetV2: deploy to first answer")
        root = RootClient(stack.root_url)
        models = default_data_dir() / "models"
        root.register_model("mobilenet_v2", model_zoo.cached_onnx("mobilenet_v2", models))
        inputs = next(random_inputs(example_sla("mobilenet_v2", "x")["applications"][0]["microservices"][0]
                                    ["model"]["input"], 1, seed=0))
        split = {"scheduler_profile": "flops-balanced", "max_partitions": 3}
        _, cold = deploy_to_first_answer(stack, root, example_sla("mobilenet_v2", "cold", **split), inputs)
        service_id, warm = deploy_to_first_answer(stack, root, example_sla("mobilenet_v2", "warm", **split),
                                                  inputs)
        planner_id, planner = deploy_to_first_answer(stack, root, example_sla("mobilenet_v2", "planner"),
                                                     inputs)
        result.update({"deploy_to_first_answer_s": warm, "deploy_to_first_answer_cold_s": cold,
                       "deploy_to_first_answer_planner_s": planner})

        log.info("recovery after a node kill")
        result.update(recover_after_kill(stack, root, service_id, inputs, kills=2 if quick else 5))

        log.info("broker outages")
        outages = (3.0,) if quick else (3.0, 30.0)
        for outage in outages:
            result.update(broker_outage(stack, root, [service_id, planner_id], inputs, outage))
        result["broker_outage_lost_deployments"] = sum(result[f"broker_outage_{o:.0f}s_lost_deployments"]
                                                       for o in outages)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = benchmark_parser(__doc__, "fewer repetitions, smaller load (< 2 minutes)")
    add_json_option(parser, "controlplane")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("node_engine").setLevel(logging.WARNING)  # the client's retries are counted, not logged
    logging.getLogger("treeline_cli.stack").setLevel(logging.WARNING)
    result = run(args.quick)
    report(result, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
