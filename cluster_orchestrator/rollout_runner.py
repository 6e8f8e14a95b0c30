"""Running one canary: route a share to the new generation, gather figures, promote or roll back.

Called by the deployer worker (:mod:`.deployer`) once the new generation is READY and
:func:`.rollout.wants_canary` says so; it runs on that worker's thread, so the reconcile loop
starts no other worker for the deployment meanwhile. Steps, each an event on the deployment
(and so on the service at the root, ``treeline describe``):

1. probe the serving pipeline (reference answers) while it still takes every request;
2. commit ``rollout = {phase, share, since, old_generation, new_generation, router, ...}``
   (``rollout_started``), then deploy the *router* (:data:`.rollout.ROUTER_STAGE` of the new
   generation, on the serving entry's node) that takes ``canary_share`` of the entry's
   requests (``canary_share``);
3. probe the new pipeline, then judge (:func:`.rollout.decide`) on every new stage report until
   the verdict is no longer "wait" (``rollout_check`` with the figures, after the probe and at
   the verdict);
4. **promote** (``promoted``): return True; the deployer switches ``placement`` to the new
   generation and the reconcile loop removes the router and, after its drain, the old
   generation. **Roll back** (``rolled_back``): remove the router first and wait until its node
   says it is gone, let requests already handed to the canary finish (``drain_s``), then drop
   the new generation (``pending := None``: the reconcile loop deletes its stages); the serving
   generation never stopped serving.

Zero failed requests rests on that order: the serving pipeline is never touched, the canary is
only reachable through the router while it is READY, and an error on the canary side is
retryable for the caller (the entry does not store errors, a retry is split afresh).
A stale epoch (the deployment was re-requested or deleted meanwhile) raises
:class:`~.deployments.Superseded`; the reconcile loop then removes the router and the canary,
which no desired plan holds any more.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cluster_orchestrator import planning
from cluster_orchestrator.deployments import DeploymentBook, Superseded
from cluster_orchestrator.rollout import (
    PROMOTE,
    ROUTER_STAGE,
    WAIT,
    CanaryFigures,
    RolloutPolicy,
    Verdict,
    decide,
)
from cluster_orchestrator.rollout_checks import (
    ProbeResult,
    StageStatsBoard,
    disagreement,
    probe_inputs,
    run_probe,
)
from cluster_orchestrator.tracker import StageTracker
from treeline_common import topics
from treeline_common.clock import Clock
from treeline_common.jobs import JobStatus, Placement, StagePlacement, event
from treeline_common.messages import DeleteCommand, DeployCommand, stage_key

log = logging.getLogger(__name__)

CHECK_PERIOD_S = 1.0  # longest wait between two judgements when no stage report arrives


@dataclass(frozen=True)
class RolloutContext:
    """Where the rollout's commands go and how they are secured (the deployer's settings)."""

    base_url: str  # where nodes fetch artifacts
    secret: bytes  # the cluster's data-plane secret (b"": open data plane)
    microservice: Any  # the job's deployment_descriptors Microservice view
    nodes: Sequence[Mapping[str, Any]]  # node documents (CURVE keys for encrypted routes)
    stage_timeout: float = 60.0
    drain_s: float = 1.0  # after the router is gone, before the canary's stages go


def router_command(new: Placement, old_entry_node: str, old_entry_endpoint: str, old_entry_key: str,
                   share: float, context: RolloutContext) -> tuple[str, DeployCommand]:
    """The deploy command of the router on the serving entry's node: a relay of the new generation
    (its data key, the deployment's caller key) routed to the new entry, diverting ``share`` of the
    requests addressed to ``old_entry_key``."""
    entry = new.relay or min(new.stages, key=lambda s: s.index)
    router = StagePlacement(index=ROUTER_STAGE, node_id=old_entry_node, endpoint=old_entry_endpoint,
                            stage_key=stage_key(new.deployment_id, ROUTER_STAGE, new.generation),
                            inputs=entry.inputs, outputs=entry.inputs, node_name=old_entry_node)
    routed = Placement(deployment_id=new.deployment_id, generation=new.generation, stages=(entry,),
                       relay=router, inputs=new.inputs)
    node_id, command = planning.secured_commands(routed, context.base_url, context.secret,
                                                 context.microservice, context.nodes)[0]
    return node_id, dataclasses.replace(command, divert_from=old_entry_key, divert_share=share)


@dataclass(frozen=True)
class _Canary:
    """One canary in progress (what its steps share)."""

    deployment_id: str
    epoch: int
    serving: Placement
    new: Placement
    node_id: str  # the router's node
    context: RolloutContext
    cause: str  # "model a v1 -> a v2", the cause of its events


class RolloutRunner:
    """Runs canaries (module docstring); owns no thread."""

    def __init__(self, book: DeploymentBook, publish: Callable[[str, Any], None], tracker: StageTracker,
                 board: StageStatsBoard, clock: Clock, stop: threading.Event,
                 on_change: Callable[[str], None]) -> None:
        self._book = book
        self._publish = publish
        self._tracker = tracker
        self._board = board
        self._clock = clock
        self._stop = stop
        self._on_change = on_change

    def _event(self, deployment_id: str, kind: str, cause: str, **details: Any) -> None:
        self._book.add_event(deployment_id, event(self._clock.now(), kind, cause, **details))
        self._on_change(deployment_id)

    def _ms(self) -> float:
        return self._clock.monotonic() * 1000.0

    def run(self, deployment_id: str, epoch: int, serving: Placement, new: Placement, policy: RolloutPolicy,
            context: RolloutContext, models: tuple[str, str]) -> bool:
        """One canary of ``new`` against ``serving``; True: promote (the caller switches), False:
        rolled back (committed here). ``models``: (serving, new) model labels for events."""
        assert serving.entry is not None
        entry = new.relay or min(new.stages, key=lambda s: s.index)
        inputs = probe_inputs(new.inputs, policy.probe)
        old_probe = self._probe(context, deployment_id, serving.generation, serving.entry.endpoint,
                                serving.entry.stage_key, inputs)
        node_id, command = router_command(new, serving.entry.node_id, serving.entry.endpoint,
                                          serving.entry.stage_key, policy.canary_share, context)
        canary = _Canary(deployment_id, epoch, serving, new, node_id, context,
                         f"model {models[0]} -> {models[1]}")
        rollout = {"phase": "canary", "share": policy.canary_share, "since": self._clock.now(),
                   "old_generation": serving.generation, "new_generation": new.generation,
                   "router": {"node_id": node_id, "stage_key": command_key(command)},
                   "policy": policy.to_dict()}
        self._book.commit(deployment_id, epoch, status=JobStatus.RUNNING, rollout=rollout,
                          status_detail=f"rollout: canary {policy.canary_share:.0%} of requests to "
                                        f"generation {new.generation} ({models[1]})")
        self._event(deployment_id, "rollout_started", canary.cause, old_generation=serving.generation,
                    new_generation=new.generation, strategy=policy.strategy)
        state, detail = self._deploy_router(deployment_id, new.generation, node_id, command, context)
        routed_at = self._clock.monotonic()
        if state != "READY":
            self._rollback(canary, Verdict("rollback", f"canary route not ready: {detail}"), None, routed_at)
            return False
        self._event(deployment_id, "canary_share", canary.cause, share=policy.canary_share, node=node_id,
                    entry=serving.entry.stage_key)
        new_probe = self._probe(context, deployment_id, new.generation, entry.endpoint, entry.stage_key,
                                inputs)
        verdict, figures = self._judge(canary, policy, old_probe, new_probe, routed_at)
        if verdict.action == PROMOTE:
            self._event(deployment_id, "promoted", canary.cause, reason=verdict.reason,
                        figures=figures.to_dict(), canary_s=round(self._clock.monotonic() - routed_at, 3))
            return True
        self._rollback(canary, verdict, figures, routed_at)
        return False

    def _probe(self, context: RolloutContext, deployment_id: str, generation: int, endpoint: str,
               entry_key: str, inputs: Sequence[Mapping[str, Any]]) -> ProbeResult:
        """The probe inputs through one generation's entry (signed with its data key)."""
        if not inputs:
            return ProbeResult()
        return run_probe(endpoint, entry_key, self._key(context, deployment_id, generation), inputs, self._ms)

    @staticmethod
    def _key(context: RolloutContext, deployment_id: str, generation: int) -> str:
        """What the cluster signs probe requests with: the generation's data key ("" when open)."""
        return planning.data_key(context.secret, deployment_id, generation) if context.secret else ""

    def _deploy_router(self, deployment_id: str, generation: int, node_id: str, command: DeployCommand,
                       context: RolloutContext) -> tuple[str, str]:
        self._tracker.expect(deployment_id, generation, {ROUTER_STAGE: node_id})
        try:
            self._publish(topics.control_deploy(node_id), command)
            return self._tracker.wait(deployment_id, generation, context.stage_timeout, self._stop)
        finally:
            self._tracker.forget(deployment_id, generation)

    def _judge(self, canary: _Canary, policy: RolloutPolicy, old_probe: ProbeResult, new_probe: ProbeResult,
               routed_at: float) -> tuple[Verdict, CanaryFigures]:
        """Judge on every new stage report (at least every CHECK_PERIOD_S) until the verdict is final."""
        deployment_id, new = canary.deployment_id, canary.new
        indexes = [s.index for s in new.all_stages()]
        seq = self._board.seq()
        reported = False
        live, live_at = 0, routed_at  # live requests seen so far and when their count last rose
        while True:
            live_ms = self._board.compute_ms(deployment_id, new.generation, indexes)
            latencies = [v for v in (new_probe.median_ms, live_ms) if v is not None]
            now = self._clock.monotonic()
            seen = self._board.requests(deployment_id, new.generation, ROUTER_STAGE)
            if seen > live:
                live, live_at = seen, now
            figures = CanaryFigures(
                elapsed_s=now - routed_at, idle_s=now - live_at,
                live_requests=seen,
                probe_requests=len(new_probe.latencies_ms), probe_errors=len(new_probe.errors),
                first_error=new_probe.errors[0] if new_probe.errors else "",
                latency_ms=max(latencies) if latencies else None,
                disagreement=disagreement(old_probe, new_probe))
            verdict = decide(policy, figures)
            if not reported or verdict.action != WAIT:
                self._event(deployment_id, "rollout_check", canary.cause, verdict=verdict.action,
                            reason=verdict.reason, figures=figures.to_dict(),
                            serving_latency_ms=old_probe.median_ms)
                reported = True
            if verdict.action != WAIT:
                return verdict, figures
            if self._stop.is_set() or int(self._book.require(deployment_id).get("epoch", 0)) != canary.epoch:
                raise Superseded(deployment_id)
            seq = self._board.wait_after(seq, CHECK_PERIOD_S)

    def _rollback(self, canary: _Canary, verdict: Verdict, figures: CanaryFigures | None,
                  routed_at: float) -> None:
        """Router first (and wait until it is gone), drain, then drop the canary generation."""
        deployment_id, new, node_id = canary.deployment_id, canary.new, canary.node_id
        context = canary.context
        decided = self._clock.monotonic()
        self._tracker.expect(deployment_id, new.generation, {ROUTER_STAGE: node_id})
        try:
            self._publish(topics.control_delete(node_id),
                          DeleteCommand(deployment_id, stage=ROUTER_STAGE, generation=new.generation))
            # the node's REMOVED report ends the wait (the tracker reads it as the stage failing)
            state, _ = self._tracker.wait(deployment_id, new.generation, context.stage_timeout, self._stop)
        finally:
            self._tracker.forget(deployment_id, new.generation)
        removed = self._clock.monotonic()
        if state == "TIMEOUT":
            log.warning("%s: no word that the canary router is gone; dropping the canary", deployment_id)
        self._stop.wait(context.drain_s)  # requests already handed to the canary finish there
        self._book.commit(deployment_id, canary.epoch, status=JobStatus.RUNNING, pending=None, rollout=None,
                          status_detail=f"rolled back to generation {canary.serving.generation}: "
                                        f"{verdict.reason}",
                          rolled_back_model=self._book.require(deployment_id)["job"]["model"]["sha256"],
                          attempts=0, retry_at=None)
        self._event(deployment_id, "rolled_back", canary.cause, reason=verdict.reason,
                    figures=figures.to_dict() if figures else None, generation=canary.serving.generation,
                    rollback_s=round(removed - decided, 3), canary_s=round(removed - routed_at, 3))


def keep_serving(book: DeploymentBook, clock: Clock, deployment_id: str, epoch: int, reason: str) -> bool:
    """A new model version that cannot be brought up (unschedulable, out of attempts) leaves the
    serving one in place, as a rolled-back canary does: True when committed so; False when the
    deployment serves nothing or already serves the job's model (no such update)."""
    doc = book.require(deployment_id)
    model = (doc.get("job") or {}).get("model", {}).get("sha256")
    if doc.get("placement") is None or doc.get("serving_model") in (None, model):
        return False
    book.commit(deployment_id, epoch, status=JobStatus.RUNNING, pending=None, rollout=None, retry_at=None,
                attempts=0, rolled_back_model=model, failed_capacity=None,
                status_detail=f"new version not deployed ({reason}); still serving "
                              f"generation {doc['placement'].get('generation')}")
    book.add_event(deployment_id, event(clock.now(), "rolled_back", "new model version", reason=reason))
    return True


def command_key(command: DeployCommand) -> str:
    """The stage key a deploy command asks for."""
    return stage_key(command.deployment_id, command.stage, command.generation)
