"""Deploy and delete commands from the cluster, executed in order on one worker thread.

MQTT handlers only decode and enqueue (paho's network thread must stay free so telemetry
and liveness keep flowing while a partition downloads). One worker applies commands in
arrival order, so a delete that follows a deploy of the same stage always wins.

Contract (see :class:`treeline_common.messages.DeployCommand`):

- deploy: DOWNLOADING -> LOADING -> READY (with ``load_ms``), or FAILED with the reason;
  bytes whose sha256 differs from the command are refused ("sha256 mismatch: expected X
  got Y") and deleted;
- stages are keyed by ``stage_key(deployment_id, stage, generation)``: a deploy for a new
  generation ADDS a stage beside the old generation's one (make-before-break: both serve
  until the cluster deletes the old generation);
- a repeated deploy of a loaded key with the same sha256 only updates its route
  (``next``) and its access rule (keys; :mod:`node_engine.data_plane.security`) and
  re-reports READY; a new sha256 for the same key replaces the stage (its
  counters carry over); a new generation starts with fresh counters;
- delete (see :class:`~treeline_common.messages.DeleteCommand`): unload every stage the
  command selects and report REMOVED for each, with that stage's own generation; deleting
  a named stage that is not loaded still reports REMOVED for it (idempotent), with the
  command's generation (0 when it names none);
- refusals (:mod:`node_engine.refusals`), each a FAILED with a reason and nothing else done,
  never a crash: a payload that does not decode (``"bad command: <field> <reason>"``, when the
  stage it meant is readable from it; otherwise it is logged and dropped); a command that
  decodes but makes no sense (negative stage, a next hop that is not ``tcp://host:port``, ...);
  a partition that does not fit in the node's memory limit minus what its loaded stages take
  (``"memory limit exceeded: ..."``, refused before or while downloading). Unknown fields are
  logged and tolerated (forward compatibility of every wire contract).
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from node_engine.artifacts import ArtifactError, ArtifactTooLarge, DownloadCancelled, fetch_artifact
from node_engine.data_plane.security import StageAccess
from node_engine.refusals import (
    artifact_budget,
    delete_problems,
    deploy_problems,
    identity_of,
    loaded_bytes,
    memory_refusal,
    unknown_fields,
)
from node_engine.stages import LoadedStage, Session, StageCounters, StageTable, relay_stage
from treeline_common.cascade import Escalation
from treeline_common.clock import Clock
from treeline_common.errors import BAD_COMMAND
from treeline_common.messages import (
    DeleteCommand,
    DeployCommand,
    PayloadError,
    StageState,
    decode,
    stage_key,
)

log = logging.getLogger(__name__)

Loader = Callable[[Path], Session]
Reporter = Callable[[StageState], None]


class CommandHandler:
    """Decodes commands and applies them to the stage table on its own worker thread."""

    def __init__(
        self,
        node_id: str,
        stages: StageTable,
        data_dir: Path,
        loader: Loader,
        report: Reporter,
        clock: Clock,
        stop: threading.Event,
        *,
        join_token: str | None = None,
        memory_limit_bytes: int | None = None,
    ) -> None:
        """``join_token``: sent on artifact downloads (the cluster asks for it when it has join tokens).
        ``memory_limit_bytes``: the memory the node offers to its stages (None: no limit checked)."""
        self._node_id = node_id
        self._stages = stages
        self._data_dir = data_dir
        self._loader = loader
        self._report = report
        self._clock = clock
        self._stop = stop
        self._join_token = join_token
        self._memory_limit = memory_limit_bytes
        # commands, and refusals of payloads that did not decode (reported in arrival order)
        self._queue: queue.Queue[DeployCommand | DeleteCommand | StageState | None] = queue.Queue()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        # daemon: a download in progress must not hold up the process exit on SIGTERM
        self._thread = threading.Thread(target=self._run, name="commands", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 0.5) -> None:
        self._queue.put(None)
        if self._thread is not None:
            self._thread.join(timeout)

    # ------------------------------------------------------------------ MQTT handlers

    def on_deploy(self, payload: bytes) -> None:
        self._enqueue(DeployCommand, payload)

    def on_delete(self, payload: bytes) -> None:
        self._enqueue(DeleteCommand, payload)

    def _enqueue(self, cls: type[Any], payload: bytes) -> None:
        try:
            command = decode(cls, payload)
        except PayloadError as exc:
            meant = identity_of(payload)
            if meant is None:
                log.warning("dropping bad %s payload (no stage readable from it): %s", cls.__name__, exc)
                return
            log.warning("refusing bad %s payload for %s: %s", cls.__name__, meant, exc)
            self._queue.put(self._make_state(meant[0], meant[1], "FAILED", meant[2], f"{BAD_COMMAND}: {exc}"))
            return
        unknown = unknown_fields(cls, payload)
        if unknown:
            log.warning("%s carries fields this node does not know (ignored): %s", cls.__name__, unknown)
        self._queue.put(command)

    # ------------------------------------------------------------------ worker

    def _run(self) -> None:
        while not self._stop.is_set():
            command = self._queue.get()
            if command is None:
                return
            try:
                if isinstance(command, StageState):
                    self._report(command)
                elif isinstance(command, DeployCommand):
                    self.deploy(command)
                else:
                    self.delete(command)
            except Exception:
                log.exception("command %s failed", command)  # keys are left out of the repr

    def deploy(self, cmd: DeployCommand) -> None:
        """Apply one deploy command synchronously (the worker calls this)."""
        problems = deploy_problems(cmd)
        if problems:
            log.warning("refusing deploy of %s/%s: %s", cmd.deployment_id, cmd.stage, problems)
            self._state(cmd, "FAILED", reason=f"{BAD_COMMAND}: {'; '.join(problems)}")
            return
        key = stage_key(cmd.deployment_id, cmd.stage, cmd.generation)
        current = self._stages.get(key)
        if current is not None and current.sha256 == cmd.sha256.lower():
            self._stages.put(current.with_route(cmd.next, cmd.generation, StageAccess.from_command(cmd)))
            log.info("stage %s already loaded; re-reporting READY", key)
            self._state(cmd, "READY", load_ms=current.load_ms)
            return
        if cmd.relay:  # relay stage: no artifact to download or load (node_engine.stages.relay_stage)
            previous = self._stages.put(relay_stage(cmd, current.counters if current is not None else None))
            if previous is not None:
                previous.session.close()
            log.info("relay stage %s READY (next=%s)", key, cmd.next.stage_key if cmd.next else None)
            self._state(cmd, "READY")
            return
        used, loaded = self._stages.memory_bytes(excluding=key)  # a replaced stage frees its share
        self._state(cmd, "DOWNLOADING")
        try:
            path = fetch_artifact(cmd.artifact_url, cmd.sha256, self._data_dir, stop=self._stop,
                                  token=self._join_token, max_bytes=artifact_budget(self._memory_limit, used))
        except DownloadCancelled:
            log.info("deploy of %s cancelled by shutdown", key)
            return
        except ArtifactTooLarge as exc:
            assert self._memory_limit is not None  # only a budget makes an artifact too large
            reason = memory_refusal(exc.size, self._memory_limit, used, loaded)
            log.warning("stage %s: %s", key, reason)
            self._state(cmd, "FAILED", reason=reason)
            return
        except ArtifactError as exc:
            log.warning("stage %s: %s", key, exc)
            self._state(cmd, "FAILED", reason=str(exc))
            return
        self._state(cmd, "LOADING")
        start = self._clock.monotonic()
        try:
            session = self._loader(path)
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises several types
            log.warning("stage %s: load failed: %s", key, exc)
            self._state(cmd, "FAILED", reason=f"load failed: {exc}")
            return
        load_ms = (self._clock.monotonic() - start) * 1000.0
        stage = LoadedStage(
            key=key,
            deployment_id=cmd.deployment_id,
            index=cmd.stage,
            sha256=cmd.sha256.lower(),
            generation=cmd.generation,
            session=session,
            next=cmd.next,
            path=path,
            load_ms=load_ms,
            counters=current.counters if current is not None else StageCounters(),
            outputs=tuple(cmd.outputs),
            access=StageAccess.from_command(cmd),
            memory_bytes=loaded_bytes(path.stat().st_size),
            cascade=Escalation.of_command(cmd),
        )
        previous = self._stages.put(stage)
        if previous is not None:
            previous.session.close()
        log.info("stage %s READY in %.1f ms (next=%s)", key, load_ms,
                 cmd.next.stage_key if cmd.next else None)
        self._state(cmd, "READY", load_ms=load_ms)

    def delete(self, cmd: DeleteCommand) -> None:
        """Apply one delete command synchronously (the worker calls this).

        Selection by ``generation`` and ``stage`` as :class:`DeleteCommand` states it; every
        unloaded stage is reported REMOVED with its own index and generation. A command that
        makes no sense (negative stage, ...) removes nothing: FAILED for the stage it names, or
        logged when it names none.
        """
        problems = delete_problems(cmd)
        if problems:
            log.warning("refusing delete of %s/%s: %s", cmd.deployment_id, cmd.stage, problems)
            if cmd.stage is not None:
                self._report(self._make_state(cmd.deployment_id, cmd.stage, "FAILED", cmd.generation or 0,
                                              f"{BAD_COMMAND}: {'; '.join(problems)}; nothing was deleted"))
            return
        removed = self._stages.remove_matching(cmd.deployment_id, stage=cmd.stage, generation=cmd.generation)
        for stage in removed:
            stage.session.close()
            self._report(self._make_state(cmd.deployment_id, stage.index, "REMOVED", stage.generation))
        if cmd.stage is not None and not removed:
            generation = cmd.generation if cmd.generation is not None else 0
            self._report(self._make_state(cmd.deployment_id, cmd.stage, "REMOVED", generation))
        log.info("deleted %s stage(s) of %s (stage %s, generation %s)", len(removed), cmd.deployment_id,
                 "*" if cmd.stage is None else cmd.stage, "*" if cmd.generation is None else cmd.generation)

    def _state(self, cmd: DeployCommand, state: str, *, reason: str = "", load_ms: float = 0.0) -> None:
        self._report(self._make_state(cmd.deployment_id, cmd.stage, state, cmd.generation, reason, load_ms))

    def _make_state(self, deployment_id: str, stage: int, state: str, generation: int,
                    reason: str = "", load_ms: float = 0.0) -> StageState:
        return StageState(node_id=self._node_id, deployment_id=deployment_id, stage=stage, state=state,
                          generation=generation, reason=reason, ts=self._clock.now(), load_ms=load_ms)
