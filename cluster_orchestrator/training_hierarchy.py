"""The cluster's side of a hierarchical training job (:mod:`treeline_common.training_hierarchy`).

A hierarchical service has one instance per part; the :class:`~treeline_common.jobs.JobRequest`
says which (``training_part``):

- **role root**: the root aggregator. Today's :class:`~.training_job.TrainingJob` with a placement
  of its Flower server only (:func:`~.training.place_aggregator`: no local clients; its clients
  are the cluster aggregators), the spec's ``min_clients`` replaced by ``min_clusters``
  (:func:`root_spec`) and as many expected Flower clients as participating clusters. It
  registers the result like a flat job; the lineage gains ``hierarchical`` (:func:`lineage_of`).
- **role cluster**: a cluster aggregator and its local clients (:class:`ClusterPartJob`), placed
  as a flat job (the "server" node runs ``python -m node_engine.training.aggregator``). It
  first learns the root aggregator's address from the root (:func:`wait_for_root_aggregator`,
  which polls ``GET /api/training/<service>/<root_instance>/aggregator`` with a deadline), then
  starts the aggregator (TrainCommand role ``aggregator``, ``upstream_address``), and the clients
  on the local address the aggregator's ``STARTED`` carries. It ends when the aggregator process
  ends after the root's last round (its ``DONE``); it registers nothing.

Faults in the cluster part are simpler than a flat job's (the root aggregator's own restarts are
the flat job's): a client that fails is reported (``training_client_lost``) and left out (the
aggregator goes on with the others while ``min_clients`` are left); an aggregator that fails,
is refused or whose node goes offline ends the part as failed. The root aggregator goes on with
the other clusters while ``min_clusters`` answer.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Collection, Mapping
from dataclasses import replace
from typing import Any

from cluster_orchestrator.training import TrainingPlacement
from cluster_orchestrator.training_job import EventSink, Publish, TrainingResult, one_line
from treeline_common import topics
from treeline_common.clock import Clock
from treeline_common.errors import NotFound
from treeline_common.jobs import JobRequest
from treeline_common.training import TrainCommand, TrainingSpec, TrainReport
from treeline_common.training_hierarchy import TrainingPart

log = logging.getLogger(__name__)

AGGREGATOR_WAIT_S = 180.0  # how long a cluster part waits for the root aggregator to start
AGGREGATOR_POLL_S = 0.5


def root_spec(spec: TrainingSpec) -> TrainingSpec:
    """The spec the root aggregator runs: its Flower clients are clusters, so ``min_clients`` is
    ``min_clusters`` (each global round needs that many cluster aggregators)."""
    if spec.hierarchical is None:
        raise ValueError("root_spec needs a hierarchical spec")
    return replace(spec, min_clients=spec.hierarchical.min_clusters)


def lineage_of(lineage: dict[str, Any], request: JobRequest) -> dict[str, Any]:
    """A root-role result's lineage: its ``clients`` are the participating clusters and
    ``parameters.hierarchical`` records ``{cluster_rounds, min_clusters, clusters}``."""
    part, spec = request.training_part, request.training
    if part is None or spec is None or spec.hierarchical is None:
        return lineage
    params = dict(lineage.get("parameters") or {})
    params["clients"] = list(part.clusters)
    params["hierarchical"] = {"cluster_rounds": spec.hierarchical.cluster_rounds,
                              "min_clusters": spec.hierarchical.min_clusters, "clusters": list(part.clusters)}
    return {**lineage, "parameters": params}


def wait_for_root_aggregator(ask: Callable[[], str], stop: threading.Event, clock: Clock,
                             timeout_s: float = AGGREGATOR_WAIT_S, poll_s: float = AGGREGATOR_POLL_S) -> str:
    """The root aggregator's ``host:port``: ``ask()`` (NotFound while it has not started) polled
    every ``poll_s`` until it answers; TimeoutError after ``timeout_s``, InterruptedError when
    ``stop`` is set (the orchestrator stops or the deployment went)."""
    deadline = clock.monotonic() + timeout_s
    while True:
        try:
            return ask()
        except NotFound as exc:
            if clock.monotonic() > deadline:
                raise TimeoutError(f"the root aggregator did not start within {timeout_s:.0f} s: "
                                   f"{exc.message}") from None
        if stop.wait(poll_s):
            raise InterruptedError("stopped while waiting for the root aggregator")


class ClusterPartJob:
    """One cluster's part of a hierarchical job; the interface the runner drives a
    :class:`~.training_job.TrainingJob` through (start, on_report, tick, wait, stop, result,
    failure). ``done`` once the aggregator ended after the root's last round."""

    def __init__(self, job_id: str, spec: TrainingSpec, placement: TrainingPlacement, part: TrainingPart,
                 *, upstream: str, hosts: Mapping[str, str], publish: Publish, on_event: EventSink,
                 service: str) -> None:
        if placement.unschedulable:
            raise ValueError(f"placement is unschedulable: {placement.unschedulable}")
        self.job_id = job_id
        self.spec = spec
        self.placement = placement
        self.part = part
        self.upstream = upstream
        self._hosts = dict(hosts)
        self._publish = publish
        self._on_event = on_event
        self._into = f"{service}/{part.root_instance}"
        self._lock = threading.RLock()
        self._clients = dict.fromkeys(placement.clients, "starting")
        self._address = ""
        self._finished = threading.Event()
        self.result: TrainingResult | None = None  # a cluster part registers nothing
        self.done = False
        self.failure = ""
        self.rounds: list[int] = []

    def _event(self, kind: str, message: str, **fields: Any) -> None:
        self._on_event(self.job_id, {"type": kind, "message": message, **fields})

    def start(self) -> None:
        """Start the cluster aggregator (the clients follow its STARTED)."""
        server = self.placement.server
        self._event("training_placed", f"cluster aggregator on {server} (root aggregator {self.upstream}), "
                    f"clients on {', '.join(self.placement.clients)}",
                    explanation=self.placement.explanation())
        self._publish(topics.control_train(server), TrainCommand(
            self.job_id, "start", "aggregator", self.spec, f"{self._hosts.get(server, '127.0.0.1')}:0",
            clients=len(self.placement.clients), upstream_address=self.upstream))

    def on_report(self, node_id: str, report: TrainReport) -> None:
        if report.job_id != self.job_id or self._finished.is_set():
            return
        with self._lock:
            if report.role == "aggregator" and node_id == self.placement.server:
                self._aggregator_report(report)
            elif report.role == "client" and node_id in self._clients:
                self._client_report(node_id, report)

    def _aggregator_report(self, report: TrainReport) -> None:
        if report.state == "STARTED" and not self._address:
            self._address = report.server_address
            self._event("training_server_started", f"cluster aggregator at {report.server_address}, "
                        f"client of the root aggregator {self.upstream}", address=report.server_address)
            for node in sorted(self._clients):
                self._publish(topics.control_train(node), TrainCommand(
                    self.job_id, "start", "client", self.spec, report.server_address))
        elif report.state == "ROUND":
            self.rounds.append(report.round)
            self._event("training_cluster_round", f"local round {report.round}: {report.clients} client(s), "
                        f"loss {report.loss if report.loss is None else round(report.loss, 4)}",
                        round=report.round, loss=report.loss, clients=report.clients)
        elif report.state == "DONE":
            self.done = True
            self._event("training_cluster_done", f"cluster part done, aggregated into {self._into}")
            self._finished.set()
        elif report.state in ("REFUSED", "FAILED"):
            self.stop(f"cluster aggregator {report.state.lower()}: {one_line(report.reason)}")

    def _client_report(self, node_id: str, report: TrainReport) -> None:
        if report.state in ("STARTED", "ROUND"):
            self._clients[node_id] = "running"
        elif report.state in ("REFUSED", "FAILED") and self._clients[node_id] != "gone":
            self._clients[node_id] = "gone"
            self._event("training_client_lost", f"client {node_id} {report.state.lower()}: "
                        f"{one_line(report.reason)}", node_id=node_id, retry_in_s=None)
            left = sum(1 for state in self._clients.values() if state != "gone")
            if left < self.spec.min_clients:
                self.stop(f"{left} client(s) left, min_clients is {self.spec.min_clients}")

    def tick(self, online: Collection[str] | None = None) -> None:
        """An aggregator whose node went offline ends the part (the root goes on without it)."""
        if online is not None and self.placement.server not in online and not self._finished.is_set():
            self.stop(f"the cluster aggregator's node {self.placement.server} went offline")

    def wait(self, timeout: float) -> bool:
        return self._finished.wait(timeout)

    def stop(self, reason: str = "stopped") -> None:
        """Stop every Flower process of the part (idempotent); failed with ``reason`` unless done."""
        for node in sorted({self.placement.server, *self.placement.clients}):
            self._publish(topics.control_train(node), TrainCommand(self.job_id, "stop"))
        if not self._finished.is_set():
            self.failure = reason
            self._event("training_failed", reason)
            log.warning("training part %s failed: %s", self.job_id, reason)
            self._finished.set()
