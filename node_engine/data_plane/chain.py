"""Running a request's stages on this node: what a worker does, and what it hands back.

:class:`StageChain` runs the addressed stage and every following stage served by this same
node (the arrays are handed over in-process, never through a socket), and stops at the
first stage whose next stage is on another node (a ``forward``), at the last stage (a
``reply``, or, for a cascade's edge stage below its confidence threshold, a ``forward`` of
its original inputs to the large model: :mod:`.cascade`) or at a failure (an ``error`` with
a code). It never raises.

Threading model: :meth:`StageChain.run` is called on worker threads (and, for relay stages,
on the poll thread); it only reads the thread-safe :class:`~node_engine.stages.StageTable`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from node_engine.data_plane.cascade import escalation
from node_engine.stages import LoadedStage, StageRunner, StageTable
from treeline_common.request_context import stage_log_context
from treeline_common.tensor_wire import STAGE_FAILED, UNKNOWN_STAGE, ReplyTo

log = logging.getLogger(__name__)

MAX_LOCAL_HOPS = 64  # guards against a stage routed to itself in a loop


@dataclass
class Job:
    """One admitted request: its id here, the stage it addresses, its inputs and timings so far."""

    request_id: str
    stage: str
    inputs: dict[str, np.ndarray]
    timings: dict[str, float]
    reply_to: ReplyTo | None = None  # set when it came from another stage: where its answer goes


@dataclass
class Result:
    """What a worker hands back: a reply/error for the caller, or a forward downstream."""

    job: Job
    kind: str  # "reply" | "error" | "forward"
    outputs: dict[str, np.ndarray]
    stage: str = ""  # forward: the downstream stage key
    endpoint: str = ""  # forward: the downstream node's endpoint
    error: str = ""
    code: str = ""  # error: one of tensor_wire.ERROR_CODES
    source: str = ""  # forward: the last stage run here (names the link timing)
    key: bytes = b""  # forward: the data key to sign it with
    curve_server_key: str = ""  # forward: the downstream's CURVE key (endpoint is its CURVE socket)


class StageChain:
    """Runs a job through the stages this node serves (see the module docstring).

    ``local(stage)`` says whether ``stage``'s next stage is served by this node.
    """

    def __init__(self, stages: StageTable, runner: StageRunner, local: Callable[[LoadedStage], bool],
                 name: str) -> None:
        self._stages = stages
        self._runner = runner
        self._local = local
        self._name = name

    def unknown_stage(self, key: str) -> str:
        """The error text for a stage not served here."""
        return f"unknown stage {key!r} on node {self._name}; serving {self._stages.keys()}"

    def ends_here(self, key: str) -> bool:
        """Whether a request to stage ``key`` is answered by this node (no later stage elsewhere)."""
        for _ in range(MAX_LOCAL_HOPS):
            stage = self._stages.get(key)
            if stage is None or stage.next is None:
                return True  # the last stage (or an unknown one: the error is made here)
            if not self._local(stage):
                return False
            key = stage.next.stage_key
        return True

    def run(self, job: Job) -> Result:
        """Run the job's stages; every failure becomes an error result (code ``stage_failed``)."""
        try:
            return self._run(job)
        except Exception as exc:  # noqa: BLE001 - every failure becomes an error reply
            with stage_log_context(job.request_id, job.stage):  # the line ends request_id=.. deployment_id=..
                log.warning("stage %s failed: %s", job.stage, exc)
            return Result(job, "error", {}, error=f"stage {job.stage} failed: {exc}", code=STAGE_FAILED)

    def _run(self, job: Job) -> Result:
        key, inputs = job.stage, job.inputs
        for _ in range(MAX_LOCAL_HOPS):
            stage = self._stages.get(key)
            if stage is None:
                return Result(job, "error", {}, error=self.unknown_stage(key), code=UNKNOWN_STAGE)
            produced, compute_ms = self._runner.run(stage, inputs)
            job.timings[key] = compute_ms
            outputs = stage.select_outputs(inputs, produced)
            if stage.next is None:
                escalate = escalation(stage, outputs, job.timings)  # a cascade's edge stage (.cascade)
                if escalate is None:
                    return Result(job, "reply", outputs)
                return Result(job, "forward", dict(inputs), stage=escalate.stage_key,
                              endpoint=escalate.endpoint, source=key, key=stage.access.signing_key,
                              curve_server_key=escalate.curve_server_key)
            if not self._local(stage):
                return Result(job, "forward", outputs, stage=stage.next.stage_key,
                              endpoint=stage.next.endpoint, source=key, key=stage.access.signing_key,
                              curve_server_key=stage.next.curve_server_key)
            key, inputs = stage.next.stage_key, outputs  # co-located: hand the arrays over in-process
        return Result(job, "error", {}, error=f"stage {job.stage}: more than {MAX_LOCAL_HOPS} local hops",
                      code=STAGE_FAILED)
