"""Cluster failover, measured on real processes: two clusters, one killed under traffic.

A stack of real processes on loopback (:func:`treeline_cli.stack.start_stack`): a root whose
active window is ``window_s`` (10 s), two cluster orchestrators each with its own Mosquitto and
one ``server`` node engine, clusters pushing every 2 s. The tiny DAG CNN of
:mod:`model_zoo.tiny` is deployed (the root
chooses a cluster by dry runs) and requests are sent back to back through the data plane's
``ServiceClient`` (it re-resolves the entry at the root and retries with the same request id,
within a 30 s budget per request). Then, per round:

- ``orchestrator``: the serving cluster's orchestrator is SIGKILLed (its broker and node go on,
  so the old placement keeps answering until the switch: make-before-break across clusters);
- ``whole``: the serving cluster's orchestrator, broker and node engines are all SIGKILLed (no
  old placement can answer: requests wait in the client's retries until the move).

``cluster_failover_s``: from the kill until the root names the other cluster and the service
is RUNNING there (goal <= 20 s with a 10 s window); ``failover_failed_requests``: requests the
client never got an answer for (goal 0). After each round the killed processes are restarted and
``failover_duplicates_after_return`` counts deployments the returned cluster still holds 30 s
later (it must release them: 0).
"""

from __future__ import annotations

import logging
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.hierarchy_cluster import MODEL_NAME, tiny_sla
from model_zoo.tiny import example_input, tiny_dag_bytes
from node_engine.data_plane.service_client import RetryPolicy, ServiceClient
from treeline_cli.broker import mosquitto_binary
from treeline_cli.inference import service_resolver
from treeline_cli.root_client import RootClient
from treeline_cli.stack import Stack, StackConfig, pick_ports, start_stack
from treeline_common.http import call_json
from treeline_common.netutil import poll_until

log = logging.getLogger(__name__)


class Load:
    """Back-to-back requests through ServiceClient on a thread; counts answers and failures."""

    def __init__(self, root_url: str, service_id: str) -> None:
        self.ok = self.failed = 0
        self._stop = threading.Event()
        self._client = ServiceClient(service_resolver(root_url, service_id), service=service_id,
                                     policy=RetryPolicy(deadline=30.0, attempt_timeout=1.0, backoff_cap=0.5,
                                                        resolve_interval=0.2))
        self._input = {"input": example_input(0)}
        self._thread = threading.Thread(target=self._run, name="failover-load", daemon=True)

    def _run(self) -> None:
        with self._client as client:
            while not self._stop.is_set():
                [outcome] = client.infer_many([self._input], max_in_flight=1)
                if outcome.error is None:
                    self.ok += 1
                else:
                    self.failed += 1

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(40)


def _serving(root: RootClient, service_id: str) -> str | None:
    doc = root.service(service_id)
    return str(doc["cluster_id"]) if doc.get("status") == "RUNNING" and doc.get("cluster_id") else None


def _round(stack: Stack, root: RootClient, service_id: str, mode: str,
           progress: Callable[[str], None]) -> dict[str, float]:
    ids = {c["cluster_id"]: c["cluster_name"] for c in root.clusters()}
    owner = poll_until(lambda: _serving(root, service_id), 60, what="the service RUNNING")
    info = next(c for c in stack.clusters if c.name == ids[owner])
    victims = [info.process] if mode == "orchestrator" else [info.process, info.broker] + [
        f"node-{n}" for n in info.node_names]
    with Load(stack.root_url, service_id) as load:
        poll_until(lambda: load.ok >= 20, 30, what="answers before the kill")
        for name in victims:
            stack.kill(name)
        killed = time.monotonic()
        poll_until(lambda: (s := _serving(root, service_id)) is not None and s != owner, 120,
                   interval=0.1, what="the service RUNNING on the other cluster")
        failover_s = time.monotonic() - killed
        before = load.ok
        poll_until(lambda: load.ok >= before + 20, 60, what="answers after the move")
    progress(f"{mode}: moved from {info.name} in {failover_s:.1f} s; "
             f"{load.ok} answered, {load.failed} failed")
    for name in victims[1:] + victims[:1]:  # broker and nodes first, then the orchestrator
        stack.restart(name)
    url = f"{info.url}/api/deployments/{service_id}/0"
    released = poll_until(lambda: call_json("GET", url, timeout=5).get("status") == "DELETED", 60,
                          what=f"{info.name} to release the moved deployment")
    return {"failover_s": failover_s, "failed": load.failed, "answered": load.ok,
            "duplicates": 0 if released else 1}


def measure_failover(rounds: int = 1, window_s: float = 10.0,
                     modes: tuple[str, ...] = ("orchestrator", "whole"),
                     progress: Callable[[str], None] = log.info) -> dict[str, Any]:
    """Run ``rounds`` rounds of each mode; see the module docstring for the figures."""
    with tempfile.TemporaryDirectory(prefix="treeline-hierarchy-failover-") as tmp:
        config = pick_ports(StackConfig(
            data_dir=Path(tmp), nodes=1, profiles=("server",), clusters=2, push_interval=2.0,
            broker_kind="mosquitto" if mosquitto_binary() else "amqtt", telemetry_interval=1.0,
            node_threads=1, node_labels={}, root_args=("--active-window", str(window_s)),
            log_level="WARNING"))
        stack = start_stack(config)
        try:
            stack.wait_ready(timeout=90)
            root = RootClient(stack.root_url, timeout=30)
            root.register_model(MODEL_NAME, tiny_dag_bytes(0))
            [app] = root.submit_sla(tiny_sla("failover"))
            [service_id] = app["microservices"]
            root.deploy_service(service_id)
            results: dict[str, list[dict[str, float]]] = {m: [] for m in modes}
            for _ in range(rounds):
                for mode in modes:
                    results[mode].append(_round(stack, root, service_id, mode, progress))
        finally:
            stack.stop()
    out: dict[str, Any] = {"failover_window_s": window_s}
    for mode, rows in results.items():
        prefix = "cluster_failover" if mode == "orchestrator" else "cluster_failover_whole_cluster"
        failed = ("failover_failed_requests" if mode == "orchestrator"
                  else "failover_whole_cluster_failed_requests")
        out[f"{prefix}_s"] = round(statistics.median(r["failover_s"] for r in rows), 2)
        out[failed] = int(sum(r["failed"] for r in rows))
        out[f"{prefix}_answered_requests"] = int(sum(r["answered"] for r in rows))
        out["failover_duplicates_after_return"] = int(out.get("failover_duplicates_after_return", 0)
                                                      + sum(r["duplicates"] for r in rows))
    return out
