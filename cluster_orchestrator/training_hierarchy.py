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

Faults in the cluster part (the root aggregator's own restarts are the flat job's,
:mod:`.training_job`):

- **the cluster aggregator** whose process fails after it started, or whose node goes offline,
  is started again (event ``training_aggregator_restarted``): on the same node while it is
  online, else on the placement's first online node (:func:`~.training_job.next_server_node`),
  after a back-off of 2, 4, 8 s (:func:`~.training_job.client_backoff_s`), at most
  :data:`AGGREGATOR_RETRIES` times in a row (a completed local round resets the count), with the
  root aggregator's address asked again. Its ``STARTED`` carries a new local address: the
  clients are re-pointed to it (the node restarts a client whose address changed). The new
  process is a new Flower client of the root aggregator: it joins the next global round (the
  root aggregates the round it missed from the other clusters, as Flower's FedAvg accepts
  failures). One that fails before it ever started, or is refused, ends the part at once.
- **the root aggregator moved** (restarted from its checkpoint by its own cluster, on a new
  address): every :data:`UPSTREAM_CHECK_S` the part asks the root for the address again
  (``GET /api/training/<service>/<N>/aggregator`` answers the newest ``training_server_started``);
  when it changed, the aggregator is stopped and, once its node reports it ``STOPPED`` (or after
  :data:`STOP_WAIT_S`), started again with the new upstream (``training_aggregator_restarted``,
  not counted as a failure).
- **a client** that fails is reported (``training_client_lost``) and left out (the aggregator
  goes on with the others while ``min_clients`` are left). The root aggregator goes on with the
  other clusters while ``min_clusters`` answer.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Collection, Mapping
from dataclasses import replace
from typing import Any

from cluster_orchestrator.training import TrainingPlacement
from cluster_orchestrator.training_job import (
    EventSink,
    Publish,
    TrainingResult,
    client_backoff_s,
    next_server_node,
    one_line,
)
from treeline_common import topics
from treeline_common.clock import Clock, SystemClock
from treeline_common.errors import Conflict, NotFound, TreelineError
from treeline_common.jobs import JobRequest
from treeline_common.training import TrainCommand, TrainingSpec, TrainReport
from treeline_common.training_hierarchy import TrainingPart

log = logging.getLogger(__name__)

AGGREGATOR_WAIT_S = 180.0  # how long a cluster part waits for the root aggregator to start
AGGREGATOR_POLL_S = 0.5
AGGREGATOR_RETRIES = 3  # restarts of a failed cluster aggregator in a row before the part fails
UPSTREAM_CHECK_S = 2.0  # how often a running part asks the root whether its aggregator moved
STOP_WAIT_S = 5.0  # how long a re-pointed aggregator's STOPPED is awaited before it is started anyway


def root_spec(spec: TrainingSpec) -> TrainingSpec:
    """The spec the root aggregator runs: its Flower clients are clusters, so ``min_clients`` is
    ``min_clusters`` (each global round needs that many cluster aggregators)."""
    if spec.hierarchical is None:
        raise ValueError("root_spec needs a hierarchical spec")
    return replace(spec, min_clients=spec.hierarchical.min_clusters)


def lineage_of(lineage: dict[str, Any], request: JobRequest) -> dict[str, Any]:
    """A root-role result's lineage: its ``clients`` are the participating clusters,
    ``min_clients`` the SLA's (each cluster's), and ``parameters.hierarchical`` records
    ``{cluster_rounds, min_clusters, clusters}``."""
    part, spec = request.training_part, request.training
    if part is None or spec is None or spec.hierarchical is None:
        return lineage
    params = dict(lineage.get("parameters") or {})
    params["clients"] = list(part.clusters)
    params["min_clients"] = spec.min_clients  # the SLA's, per cluster (the root ran with min_clusters)
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
    failure). ``done`` once the aggregator ended after the root's last round.

    ``root_address``: asks the root for the root aggregator's address now (NotFound or another
    TreelineError when it cannot say; None: the upstream is never re-checked). Thread-safe as
    :class:`~.training_job.TrainingJob`: one re-entrant lock serializes reports and ticks.
    """

    def __init__(self, job_id: str, spec: TrainingSpec, placement: TrainingPlacement, part: TrainingPart,
                 *, upstream: str, hosts: Mapping[str, str], publish: Publish, on_event: EventSink,
                 service: str, root_address: Callable[[], str] | None = None,
                 clock: Clock | None = None) -> None:
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
        self._root_address = root_address
        self._clock = clock or SystemClock()
        self._into = f"{service}/{part.root_instance}"
        self._lock = threading.RLock()
        self._clients = dict.fromkeys(placement.clients, "starting")
        self._address = ""
        self._root_finished = False
        self._node = placement.server  # where the aggregator runs (or restarts) now
        self._nodes_used = {placement.server}
        self._state = "starting"  # starting | running | waiting (to start again) | stopping (re-pointed)
        self._attempts = 0  # failures since the last completed local round
        self._retry_at = 0.0
        self._next_check = self._clock.monotonic() + UPSTREAM_CHECK_S
        self._finished = threading.Event()
        self.result: TrainingResult | None = None  # a cluster part registers nothing
        self.done = False
        self.failure = ""
        self.rounds: list[int] = []
        self.restarts: list[dict[str, Any]] = []  # {"node", "reason"} per aggregator restart

    def _event(self, kind: str, message: str, **fields: Any) -> None:
        self._on_event(self.job_id, {"type": kind, "message": message, **fields})

    @property
    def aggregator(self) -> str:
        """The node the cluster aggregator runs (or restarts) on now."""
        with self._lock:
            return self._node

    def start(self) -> None:
        """Start the cluster aggregator (the clients follow its STARTED)."""
        self._event("training_placed", f"cluster aggregator on {self._node} (root aggregator "
                    f"{self.upstream}), clients on {', '.join(self.placement.clients)}",
                    explanation=self.placement.explanation())
        with self._lock:
            self._start_aggregator()

    def _start_aggregator(self) -> None:
        self._state = "starting"
        self._publish(topics.control_train(self._node), TrainCommand(
            self.job_id, "start", "aggregator", self.spec, f"{self._hosts.get(self._node, '127.0.0.1')}:0",
            clients=len(self.placement.clients), upstream_address=self.upstream))

    def on_report(self, node_id: str, report: TrainReport) -> None:
        if report.job_id != self.job_id or self._finished.is_set():
            return
        with self._lock:
            if report.role == "aggregator" and node_id == self._node:
                self._aggregator_report(report)
            elif report.role == "client" and node_id in self._clients:
                self._client_report(node_id, report)

    def _aggregator_report(self, report: TrainReport) -> None:
        if report.state == "STARTED" and self._state == "starting":
            self._state = "running"
            if report.server_address != self._address:
                self._address = report.server_address
                self._event("training_server_started", f"cluster aggregator at {report.server_address}, "
                            f"client of the root aggregator {self.upstream}", address=report.server_address)
                for node in sorted(n for n, state in self._clients.items() if state != "gone"):
                    self._publish(topics.control_train(node), TrainCommand(
                        self.job_id, "start", "client", self.spec, report.server_address))
        elif report.state == "ROUND":
            self._attempts = 0
            self.rounds.append(report.round)
            self._event("training_cluster_round", f"local round {report.round}: {report.clients} client(s), "
                        f"loss {report.loss if report.loss is None else round(report.loss, 4)}",
                        round=report.round, loss=report.loss, clients=report.clients)
        elif report.state == "DONE":
            self.done = True
            self._event("training_cluster_done", f"cluster part done, aggregated into {self._into}")
            self._finished.set()
        elif report.state == "STOPPED" and self._state == "stopping":
            self._state, self._retry_at = "waiting", self._clock.monotonic()
        elif report.state == "REFUSED" or (report.state == "FAILED" and not self._address):
            self.stop(f"cluster aggregator {report.state.lower()}: {one_line(report.reason)}")
        elif report.state == "FAILED" and self._state in ("starting", "running"):
            self._restart(f"cluster aggregator failed: {one_line(report.reason)}")

    def _restart(self, reason: str, offline: Collection[str] = ()) -> None:
        """Start the aggregator again after a back-off (bounded), on the same node while online;
        when the root says its aggregator has finished, the part ends done instead (an aggregator
        restarted after the root's last round could only fail to connect)."""
        self._refresh_upstream()
        if self._root_finished:
            self._end_with_root()
            return
        self._attempts += 1
        if self._attempts > AGGREGATOR_RETRIES:
            self.stop(f"{reason}; gave up after {AGGREGATOR_RETRIES} aggregator restart(s)")
            return
        node = next_server_node(self._node, self.placement, offline)
        if node is None:
            self.stop(f"{reason}; no online node of the placement can run the cluster aggregator")
            return
        if node != self._node:
            self._publish(topics.control_train(self._node), TrainCommand(self.job_id, "stop"))
        self._refresh_upstream()
        wait_s = client_backoff_s(self._attempts)
        self._node = node
        self._nodes_used.add(node)
        self._state, self._retry_at = "waiting", self._clock.monotonic() + wait_s
        self.restarts.append({"node": node, "reason": reason})
        self._event("training_aggregator_restarted",
                    f"{reason}; starting it again on {node} in {wait_s:.0f} s "
                    f"(try {self._attempts}/{AGGREGATOR_RETRIES})",
                    node_id=node, retry_in_s=wait_s, upstream=self.upstream)

    def _refresh_upstream(self) -> bool:
        """Ask the root for its aggregator's address; True when it moved (``upstream`` updated).
        A root that cannot answer now leaves the upstream as it is (asked again later)."""
        if self._root_address is None:
            return False
        try:
            address = self._root_address()
        except Conflict:  # the root part has finished
            self._root_finished = True
            return False
        except TreelineError as exc:
            log.info("training part %s: the root did not say where its aggregator is: %s", self.job_id, exc)
            return False
        moved = bool(address) and address != self.upstream
        if moved:
            self.upstream = address
        return moved

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
        """Reconcile (every second or so): an aggregator whose node went offline is restarted
        elsewhere; a running one whose root aggregator moved is re-pointed; a waiting one whose
        back-off passed is started again."""
        if self._finished.is_set():
            return
        with self._lock:
            now = self._clock.monotonic()
            if online is not None:
                known = {*self._nodes_used, self.placement.server, *self.placement.clients}
                offline = known - set(online)
                if self._node in offline:
                    self._restart(f"the cluster aggregator's node {self._node} went offline", offline)
                    if self._finished.is_set():
                        return
            if self._state == "running" and now >= self._next_check:
                self._next_check = now + UPSTREAM_CHECK_S
                old = self.upstream
                if self._refresh_upstream():
                    self._state, self._retry_at = "stopping", now + STOP_WAIT_S
                    self._publish(topics.control_train(self._node), TrainCommand(self.job_id, "stop"))
                    self._event("training_aggregator_restarted",
                                f"the root aggregator moved from {old} to {self.upstream}; restarting the "
                                f"cluster aggregator on {self._node} under it", node_id=self._node,
                                retry_in_s=0.0, upstream=self.upstream)
            if self._state in ("waiting", "stopping") and self._retry_at <= now:
                self._start_aggregator()

    def _end_with_root(self) -> None:
        """The root aggregator finished: this part is done; its processes are stopped."""
        self.done = True
        self._event("training_cluster_done", f"the root aggregator finished: cluster part done, aggregated "
                    f"into {self._into}")
        self._finished.set()
        self.stop()  # finished first: stop() only ends its processes, the part stays done

    def wait(self, timeout: float) -> bool:
        return self._finished.wait(timeout)

    def stop(self, reason: str = "stopped") -> None:
        """Stop every Flower process of the part (idempotent); failed with ``reason`` unless done."""
        with self._lock:
            nodes = sorted({*self._nodes_used, *self.placement.clients})
        for node in nodes:
            self._publish(topics.control_train(node), TrainCommand(self.job_id, "stop"))
        if not self._finished.is_set():
            self.failure = reason
            self._event("training_failed", reason)
            log.warning("training part %s failed: %s", self.job_id, reason)
            self._finished.set()
