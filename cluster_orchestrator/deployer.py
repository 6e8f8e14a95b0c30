"""The deployment worker: download, plan, upload partitions, command nodes, wait for READY.

One run of :meth:`Deployer.run` brings one deployment (one epoch of it) from its current
status to RUNNING or FAILED. Decide, then commit: the plan is computed from a snapshot,
then written under the epoch guard of :class:`DeploymentBook` before any command goes
out, so a deleted or re-requested deployment is never deployed by a stale worker.
Waiting is event-driven: node reports (``StageState``) are fed into :class:`StageTracker`,
and the worker blocks on its condition with a deadline.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from cluster_orchestrator import planning
from cluster_orchestrator.profiler import ProfileCollector, classes_to_profile
from cluster_orchestrator.deployments import (
    DEPLOYING, FAILED, RUNNING, SCHEDULED, DeploymentBook, Superseded,
)
from cluster_orchestrator.mqtt_bus import MessageBus
from cluster_orchestrator.root_client import RootClient
from treeline_common import topics
from treeline_common.errors import TreelineError
from treeline_common.messages import DeleteCommand, StageState

log = logging.getLogger(__name__)


@dataclass
class _Expectation:
    generation: int
    node_of: dict[int, str]
    states: dict[int, str] = field(default_factory=dict)
    reasons: dict[int, str] = field(default_factory=dict)


class StageTracker:
    """What each deployment's current generation is waiting for, fed by node reports."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._expected: dict[str, _Expectation] = {}

    def expect(self, deployment_id: str, generation: int, node_of: Mapping[int, str]) -> None:
        """Start tracking ``generation`` (replacing any older one) before commands go out."""
        with self._cond:
            self._expected[deployment_id] = _Expectation(generation, dict(node_of))
            self._cond.notify_all()

    def report(self, node_id: str, state: StageState) -> bool:
        """Record a node's report; False when it is about no tracked generation/stage."""
        with self._cond:
            exp = self._expected.get(state.deployment_id)
            if exp is None or exp.generation != state.generation or exp.node_of.get(state.stage) != node_id:
                return False
            exp.states[state.stage] = state.state
            if state.reason:
                exp.reasons[state.stage] = state.reason
            self._cond.notify_all()
            return True

    def node_lost(self, node_id: str) -> None:
        """A node went offline: its pending stages fail now instead of at the deadline."""
        with self._cond:
            for exp in self._expected.values():
                for index, owner in exp.node_of.items():
                    if owner == node_id and exp.states.get(index) != "READY":
                        exp.states[index] = "FAILED"
                        exp.reasons[index] = f"node {node_id} went offline"
            self._cond.notify_all()

    def forget(self, deployment_id: str, generation: int) -> None:
        with self._cond:
            exp = self._expected.get(deployment_id)
            if exp is not None and exp.generation == generation:
                del self._expected[deployment_id]
            self._cond.notify_all()

    def wait(self, deployment_id: str, generation: int, timeout: float,
             stop: threading.Event | None = None) -> tuple[str, str]:
        """Block until all stages are READY, one FAILED, or the deadline passes.

        Returns ("READY", ""), ("FAILED", reason), ("TIMEOUT", "<pending stages>") or
        ("SUPERSEDED", "") when another generation (or a stop) took over.
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                exp = self._expected.get(deployment_id)
                if exp is None or exp.generation != generation or (stop is not None and stop.is_set()):
                    return "SUPERSEDED", ""
                failed = sorted(i for i, s in exp.states.items() if s == "FAILED")
                if failed:
                    i = failed[0]
                    return "FAILED", f"stage {i} on node {exp.node_of[i]} failed: {exp.reasons.get(i, 'no reason')}"
                pending = sorted(i for i in exp.node_of if exp.states.get(i) != "READY")
                if not pending:
                    return "READY", ""
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return "TIMEOUT", ", ".join(
                        f"{i}@{exp.node_of[i]} ({exp.states.get(i, 'no report')})" for i in pending)
                self._cond.wait(min(remaining, 1.0))


@dataclass(frozen=True)
class DeployerSettings:
    root_url: str
    stage_timeout: float = 60.0
    profile_timeout: float = 30.0


class Deployer:
    """Runs the deployment flow; owns no thread (the orchestrator starts one per run)."""

    def __init__(self, book: DeploymentBook, bus: MessageBus, root: RootClient, tracker: StageTracker,
                 nodes: Callable[[], list[dict[str, Any]]], on_change: Callable[[str], None],
                 settings: DeployerSettings, stop: threading.Event,
                 profiles: ProfileCollector | None = None) -> None:
        self._profiles = profiles
        self._book = book
        self._bus = bus
        self._root = root
        self._tracker = tracker
        self._nodes = nodes
        self._on_change = on_change
        self._settings = settings
        self._stop = stop

    def _commit(self, deployment_id: str, epoch: int, **fields: Any) -> dict[str, Any]:
        doc = self._book.commit(deployment_id, epoch, **fields)
        self._on_change(deployment_id)
        return doc

    def run(self, deployment_id: str, epoch: int) -> None:
        """Bring the deployment to RUNNING or FAILED; a stale epoch ends the run silently."""
        try:
            self._run(deployment_id, epoch)
        except Superseded:
            log.info("deployment %s epoch %s superseded; worker stops", deployment_id, epoch)
        except Exception as exc:  # noqa: BLE001 - any failure becomes FAILED with a reason
            log.exception("deployment %s failed", deployment_id)
            try:
                self._commit(deployment_id, epoch, status=FAILED, status_detail=f"internal error: {exc}")
            except Superseded:
                pass

    def _run(self, deployment_id: str, epoch: int) -> None:
        doc = self._book.require(deployment_id)
        request = planning.job_request(doc["job"])
        old_placement = doc.get("placement")
        # 1. the model, verified against the registry's digest
        try:
            import onnx

            data = self._root.download(request.model_url, request.model_sha256)
            model = onnx.load_model_from_string(data)
        except TreelineError as exc:
            self._commit(deployment_id, epoch, status=FAILED, status_detail=f"model download: {exc.message}")
            return
        except Exception as exc:  # noqa: BLE001 - onnx parse errors have no common base
            self._commit(deployment_id, epoch, status=FAILED, status_detail=f"model is not valid ONNX: {exc}")
            return
        # 2. decide: the graph, op profiles per device class, the ML scheduler
        from deployment_descriptors import load_profile
        from ml_scheduler.graph import analyze_model

        graph = analyze_model(model)
        nodes = self._nodes()
        try:
            profile = load_profile(request.microservice.model.scheduler_profile)
        except TreelineError as exc:
            self._commit(deployment_id, epoch, status=FAILED, status_detail=f"scheduler profile: {exc.message}")
            return
        cost_model = self._cost_model(request, graph, nodes)
        outcome = planning.plan(model, graph, nodes, request.microservice, profile, cost_model)
        if not outcome.schedulable:
            detail = "; ".join(f"{n}: {r}" for n, r in sorted(outcome.reasons.items())) or "no online nodes"
            self._commit(deployment_id, epoch, status=FAILED, status_detail=f"unschedulable: {detail}",
                         reasons=outcome.reasons, explanation=outcome.explanation)
            return
        generation = int(doc.get("generation", 0)) + 1
        nodes_by_id = {n["node_id"]: n for n in nodes}
        outputs = request.output_names or outcome.output_names
        placement = planning.build_placement(
            deployment_id, generation, outcome.strategy,
            planning.input_spec_for(request, outcome.input_names), outputs,
            outcome.partitions, outcome.node_ids, nodes_by_id, outcome.predicted, outcome.relay_node_id)
        self._commit(deployment_id, epoch, status=SCHEDULED, generation=generation, reasons=outcome.reasons,
                     explanation=outcome.explanation,
                     status_detail=f"{len(placement['stages'])} stages on "
                                   f"{', '.join(s['node_name'] for s in placement['stages'])}")
        # 3. partitions to the root's artifact store
        try:
            for part in outcome.partitions:
                self._root.put_artifact(part.sha256, part.model_bytes)
        except TreelineError as exc:
            self._commit(deployment_id, epoch, status=FAILED, status_detail=f"partition upload: {exc.message}")
            return
        # 4. commit the plan, then command the nodes
        self._commit(deployment_id, epoch, status=DEPLOYING, placement=placement,
                     status_detail=f"waiting for {len(placement['stages'])} stages")
        commands = planning.deploy_commands(placement, self._settings.root_url)
        self._tracker.expect(deployment_id, generation, {cmd.stage: node for node, cmd in commands})
        try:
            for node_id, command in commands:
                self._bus.publish(topics.control_deploy(node_id), command)
            outcome_state, detail = self._tracker.wait(deployment_id, generation,
                                                       self._settings.stage_timeout, self._stop)
        finally:
            self._tracker.forget(deployment_id, generation)
        # 5. observe the result
        if outcome_state == "READY":
            for stage in [*placement["stages"], *([placement["relay"]] if placement.get("relay") else [])]:
                stage["state"] = "READY"
            self._commit(deployment_id, epoch, status=RUNNING, status_detail="all stages ready",
                         placement=placement)
            for node_id, index in planning.stale_stages(old_placement, placement):
                self._bus.publish(topics.control_delete(node_id), DeleteCommand(deployment_id, index))
        elif outcome_state == "SUPERSEDED":
            raise Superseded(deployment_id)
        else:
            detail = detail if outcome_state == "FAILED" else f"timed out waiting for stages: {detail}"
            self._commit(deployment_id, epoch, status=FAILED, status_detail=detail)
            for node_id in {node for node, _ in commands}:
                self._bus.publish(topics.control_delete(node_id), DeleteCommand(deployment_id))

    def _cost_model(self, request: planning.JobRequest, graph: Any, nodes: list[dict[str, Any]]) -> Any:
        """Op-time profiles for the model: those the root keeps, plus fresh ones for device
        classes that have none (one node per class measures; they are stored at the root)."""
        from ml_scheduler.costmodel import CostModel

        stored: dict[str, dict[str, Any]] = {}
        try:
            stored = self._root.model_profiles(request.model_name, request.model_version)
        except TreelineError as exc:
            log.warning("could not read stored profiles of %s v%s: %s", request.model_name, request.model_version,
                        exc)
        missing = classes_to_profile(nodes, set(stored))
        if missing and self._profiles is not None:
            results = self._profiles.collect(self._bus.publish, missing, request.model_url, request.model_sha256,
                                             self._settings.profile_timeout, self._stop)
            for device_class, result in results.items():
                body = dataclasses.asdict(result)
                stored[device_class] = body
                try:
                    self._root.put_model_profile(request.model_name, request.model_version, device_class, body)
                except TreelineError as exc:
                    log.warning("could not store the %s profile at the root: %s", device_class, exc)
        return CostModel.from_profiles(graph, stored)
