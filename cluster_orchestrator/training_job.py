"""Running one federated training job from the cluster: commands out, reports in, a result.

:class:`TrainingJob` commits a :class:`~cluster_orchestrator.training.TrainingPlacement`:

1. ``start()`` sends the server its :class:`~treeline_common.training.TrainCommand` (port 0:
   the node picks one) with the starting model's artifact URL and digest;
2. the server's ``STARTED`` report carries the address; every client then gets its start;
3. reports (:meth:`on_report`, fed by whoever subscribes to ``nodes/+/training``) become service
   events through ``on_event(job_id, event)`` (the same shape as
   :meth:`cluster_orchestrator.deployments.DeploymentBook.add_event`): per round the loss, the
   accuracy on the held-out split and the clients aggregated; refusals with the node's reason;
4. the server's ``DONE`` carries the trained ONNX: its digest is checked and the
   :class:`TrainingResult` (history, bytes per client and round) is handed to ``on_result``.

A client that refuses or fails is dropped; the job continues while at least ``min_clients``
remain (Flower's strategy waits for that many). Fewer: the job fails and every part is stopped.
Thread-safe: reports arrive on the MQTT thread. ``wait`` blocks until done or failed.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from cluster_orchestrator.training import TrainingPlacement
from treeline_common import topics
from treeline_common.training import TrainCommand, TrainingSpec, TrainReport

log = logging.getLogger(__name__)

Publish = Callable[[str, Any], None]
EventSink = Callable[[str, Mapping[str, Any]], None]


@dataclass(frozen=True)
class RoundFigures:
    """One round as the server reported it (round 0: the starting model)."""

    round: int
    loss: float | None
    accuracy: float | None
    clients: int
    seconds: float


@dataclass
class TrainingResult:
    """The trained model and how it came to be (what the registry's lineage records)."""

    job_id: str
    spec: TrainingSpec
    parent_version: int
    onnx: bytes
    sha256: str
    rounds: list[RoundFigures]
    clients: list[str]
    server: str
    bytes_per_client_round: dict[str, list[int]] = field(default_factory=dict)

    def lineage(self) -> dict[str, Any]:
        """The registry lineage (:class:`treeline_common.registry.Lineage` as a dict)."""
        spec = self.spec
        dp = spec.privacy
        privacy = ({"clipping_norm": dp.clipping_norm, "noise_multiplier": dp.noise_multiplier,
                    "side": dp.side} if dp else None)
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
                    "accuracy_per_round": [r.accuracy for r in self.rounds],
                    "loss_per_round": [r.loss for r in self.rounds],
                    "clients_per_round": [r.clients for r in self.rounds]}}


class TrainingJob:
    """One job's commands and reports; see the module docstring."""

    def __init__(self, job_id: str, spec: TrainingSpec, placement: TrainingPlacement, *,
                 server_host: str,
                 model_url: str, model_sha256: str, parent_version: int, publish: Publish,
                 on_event: EventSink, on_result: Callable[[TrainingResult], None] | None = None) -> None:
        if placement.unschedulable:
            raise ValueError(f"placement is unschedulable: {placement.unschedulable}")
        self.job_id = job_id
        self.spec = spec
        self.placement = placement
        self._host = server_host
        self._model = (model_url, model_sha256)
        self._parent = parent_version
        self._publish = publish
        self._on_event = on_event
        self._on_result = on_result
        self._lock = threading.Lock()
        self._clients = set(placement.clients)
        self._rounds: list[RoundFigures] = []
        self._bytes: dict[str, list[int]] = {}
        self._finished = threading.Event()
        self.result: TrainingResult | None = None
        self.failure = ""

    def _event(self, kind: str, message: str, **fields: Any) -> None:
        self._on_event(self.job_id, {"type": kind, "message": message, **fields})

    def start(self) -> None:
        """Send the server its start; the clients follow once it reports its address."""
        self._event("training_placed", f"server on {self.placement.server}, clients on "
                    f"{', '.join(self.placement.clients)}", explanation=self.placement.explanation())
        url, sha = self._model
        command = TrainCommand(self.job_id, "start", "server", self.spec, f"{self._host}:0", url, sha,
                               len(self.placement.clients))
        self._publish(topics.control_train(self.placement.server), command)

    def stop(self, reason: str = "stopped") -> None:
        """Stop every part (idempotent); the job ends as failed with ``reason`` unless it is done."""
        for node in {self.placement.server, *self.placement.clients}:
            self._publish(topics.control_train(node), TrainCommand(self.job_id, "stop"))
        self._fail(reason)

    def wait(self, timeout: float) -> bool:
        return self._finished.wait(timeout)

    @property
    def rounds(self) -> list[RoundFigures]:
        with self._lock:
            return list(self._rounds)

    def on_report(self, node_id: str, report: TrainReport) -> None:
        """A report from ``nodes/<node_id>/training`` (other jobs' reports are ignored)."""
        if report.job_id != self.job_id or self._finished.is_set():
            return
        if report.role == "server":
            self._server_report(report)
        else:
            self._client_report(node_id, report)

    def _server_report(self, report: TrainReport) -> None:
        if report.state == "STARTED":
            self._event("training_server_started", f"Flower server at {report.server_address}")
            for node in sorted(self._clients):
                self._publish(topics.control_train(node), TrainCommand(
                    self.job_id, "start", "client", self.spec, report.server_address))
        elif report.state == "ROUND":
            figures = RoundFigures(report.round, report.loss, report.accuracy, report.clients, report.seconds)
            with self._lock:
                self._rounds.append(figures)
            accuracy = "n/a" if report.accuracy is None else f"{report.accuracy:.3f}"
            self._event("training_round", f"round {report.round}/{self.spec.rounds}: accuracy {accuracy}, "
                        f"{report.clients} client(s)", round=report.round, loss=report.loss,
                        accuracy=report.accuracy, clients=report.clients)
        elif report.state == "DONE":
            self._done(report)
        elif report.state in ("REFUSED", "FAILED"):
            self.stop(f"server {report.state.lower()}: {report.reason}")

    def _client_report(self, node_id: str, report: TrainReport) -> None:
        if report.state == "ROUND":
            with self._lock:
                self._bytes.setdefault(node_id, []).append(report.bytes_sent)
        elif report.state in ("REFUSED", "FAILED"):
            self._event("training_client_lost", f"client {node_id} {report.state.lower()}: {report.reason}",
                        node_id=node_id)
            with self._lock:
                self._clients.discard(node_id)
                left = len(self._clients)
            if left < self.spec.min_clients:
                self.stop(f"{left} client(s) left, min_clients is {self.spec.min_clients}")

    def _done(self, report: TrainReport) -> None:
        onnx = base64.b64decode(report.result_onnx_b64) if report.result_onnx_b64 else b""
        sha = hashlib.sha256(onnx).hexdigest()
        if not onnx or sha != report.result_sha256:
            self.stop(f"the server's result does not match its digest {report.result_sha256[:12]}")
            return
        with self._lock:
            result = TrainingResult(self.job_id, self.spec, self._parent, onnx, sha, list(self._rounds),
                                    sorted(self.placement.clients), self.placement.server,
                                    {k: list(v) for k, v in self._bytes.items()})
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
