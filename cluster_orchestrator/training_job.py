"""Running one federated training job from the cluster: commands out, reports in, a result.

:class:`TrainingJob` commits a :class:`~cluster_orchestrator.training.TrainingPlacement`:

1. ``start()`` sends the server its :class:`~treeline_common.training.TrainCommand` (port 0:
   the node picks one) with the starting model's artifact URL and digest;
2. the server's ``STARTED`` report carries the address; every client then gets its start;
3. reports (:meth:`on_report`, fed by whoever subscribes to ``nodes/+/training``) become service
   events through ``on_event(job_id, event)`` (the same shape as
   :meth:`cluster_orchestrator.deployments.DeploymentBook.add_event`): per round the loss, the
   accuracy on the held-out split, the clients aggregated and the privacy spent (``epsilon``,
   δ = :data:`~treeline_common.training.DP_DELTA`); refusals and failures with the node's reason;
4. the server's ``DONE`` carries the trained ONNX: its digest is checked and the
   :class:`TrainingResult` (history, bytes per client and round) is handed to ``on_result``.

Faults (level-triggered: the desired clients are the placement's, :meth:`tick` compares them
with what the reports say and acts):

- **Server.** Each server ``ROUND`` report carries the checkpoint of the parameters after that
  round; the job keeps the latest. When the server reports ``FAILED`` or its node goes offline
  (:meth:`tick` with the online nodes), the job starts a new server, on the same node while it
  is online, else on the first online node of the placement, with that checkpoint and
  ``start_round`` = its round (from the starting model when no round completed), then restarts
  every client on the new address. The round history continues: rounds after the checkpoint are
  dropped and each round is recorded once. At most :data:`MAX_SERVER_RESTARTS` restarts, then
  the job fails naming the last reason. A server that fails before it reports ``STARTED`` (a
  starting model or checkpoint it cannot train, a node that cannot run it) or is ``REFUSED``
  fails the job at once with the node's reason: starting it again would fail the same way.
- **Clients.** A client that ``FAILED`` is dropped for the round (Flower aggregates the others
  when ``min_clients`` answered) and its start is sent again after a back-off
  (:func:`client_backoff_s`), at most :data:`CLIENT_RETRIES` times in a row (a server restart
  resets the count); its first round after that is announced as "client X rejoined at round
  N". A ``REFUSED`` client (no data, no training extra) is gone for good. The job fails and
  every part is stopped when fewer than ``min_clients`` clients are left that run or may still
  come back.

Thread-safe: reports arrive on the MQTT thread, :meth:`tick` on the caller's; one re-entrant
lock serializes them. ``wait`` blocks until done or failed. Time comes from the injected clock.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import threading
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from cluster_orchestrator.training import TrainingPlacement
from treeline_common import topics
from treeline_common.clock import Clock, SystemClock
from treeline_common.training import DP_DELTA, TrainCommand, TrainingSpec, TrainReport

log = logging.getLogger(__name__)

Publish = Callable[[str, Any], None]
EventSink = Callable[[str, Mapping[str, Any]], None]

MAX_SERVER_RESTARTS = 2
CLIENT_RETRIES = 3
CLIENT_BACKOFF_S = 2.0
MAX_REASON_CHARS = 300


def client_backoff_s(attempt: int, base_s: float = CLIENT_BACKOFF_S, cap_s: float = 30.0) -> float:
    """Seconds before a failed client's start is sent again: ``base_s · 2^(attempt-1)``, capped."""
    return min(base_s * 2 ** max(attempt - 1, 0), cap_s)


def next_server_node(current: str, placement: TrainingPlacement, offline: Collection[str]) -> str | None:
    """Where a failed server restarts: ``current`` while it is online, else the placement's first
    online node (its server, then its clients in order); None when every one is offline."""
    for node in (current, placement.server, *placement.clients):
        if node not in offline:
            return node
    return None


def one_line(reason: str) -> str:
    """A node's reason as one line of at most :data:`MAX_REASON_CHARS` characters."""
    text = " ".join(reason.split())
    return text if len(text) <= MAX_REASON_CHARS else text[:MAX_REASON_CHARS - 1] + "…"


@dataclass(frozen=True)
class RoundFigures:
    """One round as the server reported it (round 0: the starting model)."""

    round: int
    loss: float | None
    accuracy: float | None
    clients: int
    seconds: float
    epsilon: float | None = None


@dataclass
class TrainingResult:
    """The trained model and how it came to be (what the registry's lineage records).

    ``server_restarts``: ``{"round": rounds done, "node": where the server resumed}`` per restart.
    """

    job_id: str
    spec: TrainingSpec
    parent_version: int
    onnx: bytes
    sha256: str
    rounds: list[RoundFigures]
    clients: list[str]
    server: str
    bytes_per_client_round: dict[str, list[int]] = field(default_factory=dict)
    server_restarts: list[dict[str, Any]] = field(default_factory=list)

    def lineage(self) -> dict[str, Any]:
        """The registry lineage (:class:`treeline_common.registry.Lineage` as a dict); with
        differential privacy, ``epsilon`` (after the last round), ``epsilon_per_round`` and ``delta``."""
        spec = self.spec
        dp = spec.privacy
        privacy = ({"clipping_norm": dp.clipping_norm, "noise_multiplier": dp.noise_multiplier,
                    "side": dp.side} if dp else None)
        epsilons = [r.epsilon for r in self.rounds]
        spent = [e for e in epsilons if e is not None]
        return {"parent": {"name": spec.model_name, "version": self.parent_version},
                "operation": "federated-training", "dataset": spec.data,
                "tools": {"framework": spec.framework},
                "parameters": {
                    "strategy": spec.strategy, "strategy_parameters": spec.strategy_parameters(),
                    "rounds": spec.rounds, "clients": self.clients, "server": self.server,
                    "min_clients": spec.min_clients, "fraction_fit": spec.fraction_fit,
                    "local_epochs": spec.local_epochs, "batch_size": spec.batch_size,
                    "learning_rate": spec.learning_rate, "trainable": spec.trainable,
                    "data_selector": spec.data, "differential_privacy": privacy,
                    "epsilon": spent[-1] if dp and spent else None,
                    "epsilon_per_round": epsilons if dp else None, "delta": DP_DELTA if dp else None,
                    "server_restarts": list(self.server_restarts),
                    "accuracy_per_round": [r.accuracy for r in self.rounds],
                    "loss_per_round": [r.loss for r in self.rounds],
                    "clients_per_round": [r.clients for r in self.rounds]}}


@dataclass
class _Client:
    """What the job knows of one desired client: ``state`` starting | running | waiting | gone."""

    state: str = "starting"
    attempts: int = 0  # failures since the server last (re)started
    retry_at: float = 0.0  # clock.monotonic() when a waiting client's start is sent again
    rejoining: bool = False  # failed before: its next round is announced


class TrainingJob:
    """One job's commands and reports; see the module docstring."""

    def __init__(self, job_id: str, spec: TrainingSpec, placement: TrainingPlacement, *,
                 server_host: str,
                 model_url: str, model_sha256: str, parent_version: int, publish: Publish,
                 on_event: EventSink, on_result: Callable[[TrainingResult], None] | None = None,
                 hosts: Mapping[str, str] | None = None, clock: Clock | None = None,
                 expected_clients: int = 0) -> None:
        if placement.unschedulable:
            raise ValueError(f"placement is unschedulable: {placement.unschedulable}")
        self.job_id = job_id
        self.spec = spec
        self.placement = placement
        self._hosts = {placement.server: server_host, **(hosts or {})}
        self._default_host = server_host
        self._model = (model_url, model_sha256)
        self._parent = parent_version
        self._publish = publish
        self._on_event = on_event
        self._on_result = on_result
        self._clock = clock or SystemClock()
        self._lock = threading.RLock()
        self._clients = {node: _Client() for node in placement.clients}
        self._server = placement.server
        self._servers_used = {placement.server}
        self._address = ""  # the live server's host:port; '' while it (re)starts
        self._checkpoint: tuple[int, str, str] | None = None  # (round, npz base64, sha256)
        self._restarts: list[dict[str, Any]] = []
        self._offline: frozenset[str] = frozenset()
        self._rounds: list[RoundFigures] = []
        self._bytes: dict[str, list[int]] = {}
        self._finished = threading.Event()
        self._expected = expected_clients  # Flower clients not of the placement (a root's clusters)
        self.result: TrainingResult | None = None
        self.failure = ""

    def _event(self, kind: str, message: str, **fields: Any) -> None:
        self._on_event(self.job_id, {"type": kind, "message": message, **fields})

    def start(self) -> None:
        """Send the server its start; the clients follow once it reports its address."""
        self._event("training_placed", f"server on {self.placement.server}, clients on "
                    f"{', '.join(self.placement.clients)}", explanation=self.placement.explanation())
        with self._lock:
            self._start_server()

    def _start_server(self) -> None:
        """The start of the server on ``self._server``: from the latest checkpoint when there is one."""
        url, sha = self._model
        done, b64, digest = self._checkpoint or (0, "", "")
        active = max(sum(1 for c in self._clients.values() if c.state != "gone"), self._expected)
        command = TrainCommand(self.job_id, "start", "server", self.spec,
                               f"{self._hosts.get(self._server, self._default_host)}:0", url, sha, active,
                               start_round=done, checkpoint_b64=b64, checkpoint_sha256=digest)
        self._publish(topics.control_train(self._server), command)

    def stop(self, reason: str = "stopped") -> None:
        """Stop every part (idempotent); the job ends as failed with ``reason`` unless it is done."""
        with self._lock:
            nodes = {*self._servers_used, *self.placement.clients}
        for node in sorted(nodes):
            self._publish(topics.control_train(node), TrainCommand(self.job_id, "stop"))
        self._fail(reason)

    def wait(self, timeout: float) -> bool:
        return self._finished.wait(timeout)

    @property
    def rounds(self) -> list[RoundFigures]:
        with self._lock:
            return list(self._rounds)

    @property
    def server(self) -> str:
        """The node the Flower server runs on now."""
        with self._lock:
            return self._server

    def on_report(self, node_id: str, report: TrainReport) -> None:
        """A report from ``nodes/<node_id>/training`` (other jobs' reports are ignored, and so are
        a former server node's)."""
        if report.job_id != self.job_id or self._finished.is_set():
            return
        with self._lock:
            if report.role == "server" and node_id == self._server:
                self._server_report(report)
            elif report.role == "client" and node_id in self._clients:
                self._client_report(node_id, report)

    def tick(self, online: Collection[str] | None = None) -> None:
        """Reconcile (call it every second or so): ``online`` (the nodes known online; None: no
        news) moves the server off an offline node; waiting clients whose back-off has passed
        get their start again."""
        if self._finished.is_set():
            return
        with self._lock:
            if online is not None:
                known = {*self._servers_used, self.placement.server, *self.placement.clients}
                self._offline = frozenset(known - set(online))
                if self._server in self._offline:
                    self._restart_server(f"node {self._server} went offline")
                    if self._finished.is_set():
                        return
            now = self._clock.monotonic()
            for node, client in sorted(self._clients.items()):
                if client.state == "waiting" and client.retry_at <= now and self._address \
                        and node not in self._offline:
                    client.state = "starting"
                    self._publish(topics.control_train(node), TrainCommand(
                        self.job_id, "start", "client", self.spec, self._address))

    def _server_report(self, report: TrainReport) -> None:
        if report.state == "STARTED":
            self._address = report.server_address
            self._event("training_server_started", f"Flower server at {report.server_address}",
                        address=report.server_address)
            for node, client in sorted(self._clients.items()):
                if client.state != "gone":
                    client.state, client.attempts = "starting", 0
                    self._publish(topics.control_train(node), TrainCommand(
                        self.job_id, "start", "client", self.spec, report.server_address))
        elif report.state == "ROUND":
            self._round(report)
        elif report.state == "DONE":
            self._done(report)
        elif report.state == "REFUSED":
            self.stop(f"server refused: {one_line(report.reason)}")
        elif report.state == "FAILED" and not self._address:
            self.stop(f"server failed to start: {one_line(report.reason)}")
        elif report.state == "FAILED":
            self._restart_server(f"server failed: {one_line(report.reason)}")

    def _round(self, report: TrainReport) -> None:
        """Record a server round once (a resumed server's repeats are dropped); keep its checkpoint."""
        if self._rounds and report.round <= self._rounds[-1].round:
            return
        if report.checkpoint_b64:
            data = base64.b64decode(report.checkpoint_b64)
            if hashlib.sha256(data).hexdigest() == report.checkpoint_sha256:
                self._checkpoint = (report.round, report.checkpoint_b64, report.checkpoint_sha256)
            else:
                log.warning("job %s: round %s checkpoint fails its digest; kept round %s's", self.job_id,
                            report.round, self._checkpoint[0] if self._checkpoint else 0)
        self._rounds.append(RoundFigures(report.round, report.loss, report.accuracy, report.clients,
                                         report.seconds, report.epsilon))
        accuracy = "n/a" if report.accuracy is None else f"{report.accuracy:.3f}"
        privacy = "" if report.epsilon is None else f", epsilon {report.epsilon:.2f}"
        self._event("training_round", f"round {report.round}/{self.spec.rounds}: accuracy {accuracy}, "
                    f"{report.clients} client(s){privacy}", round=report.round, loss=report.loss,
                    accuracy=report.accuracy, clients=report.clients, epsilon=report.epsilon)

    def _restart_server(self, reason: str) -> None:
        """Resume the server from the latest checkpoint (bounded); the clients follow its STARTED."""
        if len(self._restarts) >= MAX_SERVER_RESTARTS:
            self.stop(f"{reason}; gave up after {MAX_SERVER_RESTARTS} server restart(s)")
            return
        node = next_server_node(self._server, self.placement, self._offline)
        if node is None:
            self.stop(f"{reason}; no online node of the placement can run the server")
            return
        if node != self._server:
            self._publish(topics.control_train(self._server), TrainCommand(self.job_id, "stop"))
        done = self._checkpoint[0] if self._checkpoint else 0
        self._rounds = [r for r in self._rounds if r.round <= done]
        self._restarts.append({"round": done, "node": node})
        self._server, self._address = node, ""
        self._servers_used.add(node)
        self._event("training_server_restarted",
                    f"{reason}; resuming on {node} after round {done} ({self.spec.rounds - done} round(s) "
                    f"left), restart {len(self._restarts)}/{MAX_SERVER_RESTARTS}",
                    node_id=node, round=done)
        self._start_server()

    def _client_report(self, node_id: str, report: TrainReport) -> None:
        client = self._clients[node_id]
        if client.state == "gone":
            return
        if report.state == "STARTED":
            client.state = "running"
        elif report.state == "ROUND":
            client.state = "running"
            self._bytes.setdefault(node_id, []).append(report.bytes_sent)
            if client.rejoining:
                client.rejoining = False
                self._event("training_client_rejoined", f"client {node_id} rejoined at round {report.round}",
                            node_id=node_id, round=report.round)
        elif report.state in ("REFUSED", "FAILED"):
            client.attempts += 1
            retry = report.state == "FAILED" and client.attempts <= CLIENT_RETRIES
            wait_s = client_backoff_s(client.attempts)
            client.state = "waiting" if retry else "gone"
            client.retry_at = self._clock.monotonic() + wait_s
            client.rejoining = True
            self._event("training_client_lost",
                        f"client {node_id} {report.state.lower()}: {one_line(report.reason)}",
                        node_id=node_id, retry_in_s=wait_s if retry else None)
            left = sum(1 for c in self._clients.values() if c.state != "gone")
            if left < self.spec.min_clients:
                self.stop(f"{left} client(s) left, min_clients is {self.spec.min_clients}")
            elif client.state == "gone" and self._server:  # round 1 need not wait for it any more
                self._publish(topics.control_train(self._server),
                              TrainCommand(self.job_id, "expect", "server", clients=left))

    def _done(self, report: TrainReport) -> None:
        onnx = base64.b64decode(report.result_onnx_b64) if report.result_onnx_b64 else b""
        sha = hashlib.sha256(onnx).hexdigest()
        if not onnx or sha != report.result_sha256:
            self.stop(f"the server's result does not match its digest {report.result_sha256[:12]}")
            return
        result = TrainingResult(self.job_id, self.spec, self._parent, onnx, sha, list(self._rounds),
                                sorted(self.placement.clients), self._server,
                                {k: list(v) for k, v in self._bytes.items()}, list(self._restarts))
        self.result = result
        self._event("training_done", f"{self.spec.rounds} rounds done; model {sha[:12]}", sha256=sha)
        try:
            if self._on_result is not None:
                self._on_result(result)
        finally:
            self._finished.set()

    def _fail(self, reason: str) -> None:
        if self._finished.is_set():
            return
        self.failure = reason
        self._event("training_failed", reason)
        log.warning("training job %s failed: %s", self.job_id, reason)
        self._finished.set()

