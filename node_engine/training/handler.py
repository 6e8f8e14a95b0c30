"""Train commands on a node: start and stop the Flower processes of training jobs.

Threading: :meth:`TrainingHandler.on_train` runs on paho's network thread, so it only decodes
and hands the command to a short-lived worker thread (a server first downloads the starting
model). Each Flower process is a child of the engine (``python -m node_engine.training.server``
or ``.client`` with a job file); a reader thread per child turns its progress lines into
:class:`~treeline_common.training.TrainReport` s. :meth:`close` kills every child (engine shutdown).

Contract (:mod:`treeline_common.training`):

- a start is answered ``STARTED``, or ``REFUSED`` with the reason and nothing started: the train
  extra missing (:func:`node_engine.training.missing_extra`), no data file for the selector in
  the data directory (client), a starting model that cannot be fetched or fails its digest
  (server), a resume checkpoint that fails its digest;
- a client start for a job whose client runs here with the same ``server_address`` is
  answered ``STARTED`` again and nothing else happens (level-triggered senders repeat it); any
  other start for a job and role running here (a client for a moved server, a server resumed
  from a checkpoint) kills the running process (it ends ``STOPPED``) and starts a new one;
- ``ROUND`` per round (server: loss/accuracy on ``<data dir>/test.npz`` when present, clients
  aggregated, the round's checkpoint inline; client: local loss, ``bytes_sent``), ``DONE`` at
  the end (server: the ONNX inline), ``FAILED`` when the process reports a failure (its own
  reason, e.g. a starting model it cannot train, even when it exits before listening) or exits
  non-zero (one line, :func:`~node_engine.training.failure.exit_reason`; the full text stays in
  the job directory's ``flower.log``, appended to across restarts), ``STOPPED`` after a stop;
- a payload that does not decode is logged and dropped (no job id to answer to).

Role ``aggregator`` (a hierarchical job's cluster aggregator, :mod:`.aggregator`): its local
address is picked like a server's (port 0), but there is no listening check (its local Flower
server starts only when the root aggregator asks it to fit): ``STARTED`` carries that address at
once; a repeated start while it runs is answered ``STARTED`` again.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from node_engine.artifacts import ArtifactError, fetch_artifact
from node_engine.mqtt_link import MqttLink
from node_engine.training import missing_extra
from node_engine.training.failure import exit_reason
from node_engine.training.job import EXPECTED_FILE, JobFile, parse_progress
from treeline_common import topics
from treeline_common.clock import Clock
from treeline_common.messages import PayloadError, decode, encode
from treeline_common.netutil import free_port, poll_until
from treeline_common.training import (
    MAX_CHECKPOINT_BYTES,
    MAX_RESULT_BYTES,
    RoundProgress,
    TrainCommand,
    TrainReport,
)

log = logging.getLogger(__name__)

LISTEN_TIMEOUT_S = 60.0  # torch + flwr imports on a slow device
TEST_FILE = "test.npz"  # the held-out split an aggregator node evaluates on (treeline data split)
Reporter = Callable[[TrainReport], None]


@dataclass
class _Child:
    role: str
    process: subprocess.Popen[str]
    address: str = ""  # the server address it was started with
    log_offset: int = 0  # where this run's text starts in flower.log
    stopping: bool = False


class TrainingHandler:
    """Starts/stops this node's Flower processes; see the module docstring."""

    def __init__(self, node_id: str, data_dir: Path, report: Reporter, clock: Clock, *,
                 join_token: str | None = None, python: str = sys.executable) -> None:
        self.node_id = node_id
        self.data_dir = data_dir
        self._report = report
        self._clock = clock
        self._token = join_token
        self._python = python
        self._lock = threading.Lock()
        self._children: dict[tuple[str, str], _Child] = {}
        self._closed = False

    def on_train(self, payload: bytes) -> None:
        """MQTT handler of ``control/train``: decode, then act on a worker thread."""
        try:
            command = decode(TrainCommand, payload)
        except PayloadError as exc:
            log.warning("dropping bad train command: %s", exc)
            return
        threading.Thread(target=self._apply, args=(command,), name=f"train-{command.job_id}",
                         daemon=True).start()

    def _apply(self, command: TrainCommand) -> None:
        try:
            if command.action == "stop":
                self._stop(command.job_id)
            elif command.action == "expect":
                self._expect(command)
            else:
                self._start(command)
        except Exception as exc:  # a command must never take the engine down
            log.exception("train command %s failed", command.job_id)
            self._send(command.job_id, command.role, "FAILED", reason=f"node error: {exc}")

    def _expect(self, command: TrainCommand) -> None:
        """The cluster's ``expect``: the running server's first round waits for ``clients`` only
        (written beside its job file, where :class:`~.server.StartedClientsManager` re-reads it)."""
        job_dir = self.data_dir / "training" / command.job_id / "server"
        if not (job_dir / "job.json").is_file():
            log.info("expect for job %s: no server of it here", command.job_id)
            return
        (job_dir / EXPECTED_FILE).write_text(str(command.clients))
        log.info("training job %s: the server's first round now waits for %s client(s)", command.job_id,
                 command.clients)

    def _send(self, job_id: str, role: str, state: str, **fields: object) -> None:
        self._report(TrainReport(self.node_id, job_id, role, state, ts=self._clock.now(), **fields))  # type: ignore[arg-type]

    def refusal(self, command: TrainCommand) -> str:
        """Why this node cannot take ``command`` ('' when it can); checks only, starts nothing."""
        missing = missing_extra()
        if missing:
            return missing
        assert command.spec is not None
        if command.role == "client" and not (self.data_dir / command.spec.data_file).is_file():
            return (f"no data for {command.spec.data} here: {command.spec.data_file} is not in the node's "
                    f"data directory {self.data_dir}")
        return ""

    def _running_as(self, command: TrainCommand) -> bool:
        """True when ``command`` is already being served (answered STARTED again); a child of the
        job and role started for another address is stopped and reaped first (the server moved)."""
        key = (command.job_id, command.role)
        with self._lock:
            child = self._children.get(key)
        if child is None:
            return False
        if child.process.poll() is None and ((command.role == "client" and
                                              child.address == command.server_address)
                                             or command.role == "aggregator"):  # its address is its own
            self._send(command.job_id, command.role, "STARTED", server_address=child.address)
            return True
        child.stopping = True
        child.process.kill()
        child.process.wait()
        with self._lock:
            if self._children.get(key) is child:
                del self._children[key]
        return False

    def _start(self, command: TrainCommand) -> None:
        assert command.spec is not None
        reason = self.refusal(command)
        if reason:
            self._send(command.job_id, command.role, "REFUSED", reason=reason)
            return
        if self._running_as(command):
            return
        job_dir = self.data_dir / "training" / command.job_id / command.role
        job_dir.mkdir(parents=True, exist_ok=True)
        resume_path = ""
        if command.role == "server" and command.checkpoint_b64:
            resume = base64.b64decode(command.checkpoint_b64)
            if hashlib.sha256(resume).hexdigest() != command.checkpoint_sha256:
                self._send(command.job_id, command.role, "REFUSED",
                           reason=f"checkpoint: sha256 mismatch, expected {command.checkpoint_sha256[:12]}")
                return
            resume_path = str(job_dir / f"resume-{command.start_round}.npz")
            Path(resume_path).write_bytes(resume)
        model_path = ""
        if command.role == "server" and command.model_url:
            try:
                model_path = str(fetch_artifact(command.model_url, command.model_sha256, job_dir,
                                                token=self._token))
            except ArtifactError as exc:
                self._send(command.job_id, command.role, "REFUSED", reason=f"starting model: {exc}")
                return
        data = self.data_dir / (command.spec.data_file if command.role == "client" else TEST_FILE)
        address = command.server_address
        host, _, port = address.rpartition(":")
        if command.role in ("server", "aggregator") and port == "0":
            address = f"{host}:{free_port(host)}"
        job = JobFile(command.spec, address, str(data), model_path,
                      str(job_dir / "result.onnx"), command.clients,
                      seed=int(hashlib.sha256(self.node_id.encode()).hexdigest()[:6], 16),
                      start_round=command.start_round, resume_path=resume_path, checkpoint_dir=str(job_dir),
                      upstream_address=command.upstream_address)
        path = job.write(job_dir / "job.json")
        with (job_dir / "flower.log").open("a") as log_file:
            offset = log_file.tell()
            argv = [self._python, "-m", f"node_engine.training.{command.role}", str(path)]
            process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=log_file, text=True, bufsize=1)
        child = _Child(command.role, process, address, offset)
        with self._lock:
            if self._closed:
                process.kill()
                return
            self._children[(command.job_id, command.role)] = child
        log.info("training job %s: %s started (pid %s)", command.job_id, command.role, process.pid)
        if command.role == "server" and not _listening(address, process):
            if process.poll() is None:  # alive but deaf: killed and reported FAILED, not STOPPED
                child.stopping = True
                process.kill()
                process.wait()
                with self._lock:
                    self._children.pop((command.job_id, command.role), None)
                self._send(command.job_id, command.role, "FAILED", reason=f"the Flower server did not "
                           f"listen on {address} within {LISTEN_TIMEOUT_S:g} s")
            else:  # it exited first: its own failed (or done) line says why
                self._follow(command.job_id, child, job_dir)
            return
        self._send(command.job_id, command.role, "STARTED", server_address=address)
        threading.Thread(target=self._follow, args=(command.job_id, child, job_dir), daemon=True,
                         name=f"train-{command.role}-{command.job_id}").start()

    def _follow(self, job_id: str, child: _Child, job_dir: Path) -> None:
        """Progress lines -> reports until the child exits; then FAILED/STOPPED if nothing final came.

        A final line (done/failed) is reported only once the child has exited and left
        :meth:`running`: a start the cluster sends on that report is never refused as "already
        runs here"."""
        last: RoundProgress | None = None
        assert child.process.stdout is not None
        for line in child.process.stdout:
            progress = parse_progress(line)
            if progress is None:
                continue
            if progress.event in ("done", "failed"):
                last = progress
            else:
                self._forward(job_id, child.role, progress)
        code = child.process.wait()
        with self._lock:
            if self._children.get((job_id, child.role)) is child:  # not a successor's entry
                del self._children[(job_id, child.role)]
        final = last is not None and self._forward(job_id, child.role, last)
        if child.stopping:
            self._send(job_id, child.role, "STOPPED")
        elif not final:
            with (job_dir / "flower.log").open("rb") as log_file:
                log_file.seek(child.log_offset)
                text = log_file.read().decode(errors="replace")
            self._send(job_id, child.role, "FAILED", reason=exit_reason(child.role, code, text))

    def _forward(self, job_id: str, role: str, progress: RoundProgress) -> bool:
        """One progress line as a report; True when it was final (done/failed)."""
        figures = {"round": progress.round, "loss": progress.loss, "accuracy": progress.accuracy,
                   "clients": progress.clients, "bytes_sent": progress.bytes_sent,
                   "seconds": progress.seconds, "epsilon": progress.epsilon}
        if progress.event == "round":
            self._send(job_id, role, "ROUND", **figures, **_checkpoint_fields(progress.checkpoint_path))
            return False
        if progress.event == "failed":
            self._send(job_id, role, "FAILED", reason=progress.reason)
            return True
        result = Path(progress.result_path).read_bytes() if progress.result_path else b""
        if len(result) > MAX_RESULT_BYTES:
            self._send(job_id, role, "FAILED", reason=f"result of {len(result)} bytes is over the "
                                                        f"{MAX_RESULT_BYTES}-byte inline limit")
            return True
        self._send(job_id, role, "DONE", round=progress.round,
                   result_onnx_b64=base64.b64encode(result).decode() if result else "",
                   result_sha256=hashlib.sha256(result).hexdigest() if result else "")
        return True

    def _stop(self, job_id: str) -> None:
        with self._lock:
            children = [c for (job, _), c in self._children.items() if job == job_id]
        for child in children:
            child.stopping = True
            child.process.kill()

    def running(self) -> list[tuple[str, str]]:
        """``(job_id, role)`` of the children running now."""
        with self._lock:
            return sorted(self._children)

    def close(self) -> None:
        """Kill and reap every child (the engine is stopping); no more starts after this."""
        with self._lock:
            self._closed = True
            children = list(self._children.values())
        for child in children:
            child.stopping = True
            child.process.kill()
        for child in children:
            try:
                child.process.wait(5)
            except subprocess.TimeoutExpired:
                log.warning("training child %s did not exit", child.process.pid)


def _checkpoint_fields(path: str) -> dict[str, str]:
    """A round's checkpoint file as report fields (none when absent, unreadable or too big)."""
    try:
        data = Path(path).read_bytes() if path else b""
    except OSError as exc:
        log.warning("checkpoint %s unreadable: %s", path, exc)
        return {}
    if not data or len(data) > MAX_CHECKPOINT_BYTES:
        return {}
    return {"checkpoint_b64": base64.b64encode(data).decode(),
            "checkpoint_sha256": hashlib.sha256(data).hexdigest()}


def _listening(address: str, process: subprocess.Popen[str]) -> bool:
    """Wait (polling with a deadline) until the server accepts connections at ``address``, so its
    clients connect at once instead of backing off; False when it exits or the deadline passes."""
    host, _, port = address.rpartition(":")

    def probe() -> str:
        if process.poll() is not None:
            return "exited"
        with socket.create_connection((host, int(port)), timeout=0.5):
            return "listening"

    try:
        state = poll_until(probe, LISTEN_TIMEOUT_S, interval=0.1, what=f"the Flower server on {address}")
    except TimeoutError:
        return False
    return state == "listening"


def attach(link: MqttLink, node_id: str, data_dir: Path, clock: Clock,
           join_token: str | None = None) -> TrainingHandler:
    """A handler for this node, subscribed to its ``control/train`` topic, reporting on ``training``."""

    def publish(report: TrainReport) -> None:
        link.publish(topics.training(node_id), encode(report), qos=1)
        log.info("training %s/%s -> %s%s", report.job_id, report.role, report.state,
                 f" ({report.reason})" if report.reason else "")

    handler = TrainingHandler(node_id, data_dir, publish, clock, join_token=join_token)
    link.subscribe(topics.control_train(node_id), handler.on_train)
    return handler
