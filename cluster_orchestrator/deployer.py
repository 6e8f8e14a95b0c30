"""The deployment worker: one attempt to bring a deployment to a new, live plan.

The reconcile loop (:mod:`.reconcile`) decides *when* a deployment needs a plan; one run
of :meth:`Deployer.run` is one attempt, in four steps, each its own method:

1. **fetch** the model (verified against the registry digest, cached by digest);
2. **decide**: snapshot the nodes, build the cost model (stored profiles plus fresh ones
   for unprofiled or drifted device classes) and run the ML scheduler; for an
   *improvement* re-plan, keep the serving plan unless the new one is predicted better
   by the margin;
3. **publish** the partitions to the root's artifact store;
4. **command and wait**: commit the new generation as ``pending`` (under the epoch guard:
   decide, then commit), send the deploy commands, wait for every stage READY, then switch
   ``placement`` to it (make-before-break: the old generation keeps serving until then;
   the reconcile loop deletes its stages afterwards, as stages no desired plan holds).

Failure of an attempt is never final by itself: a failed or timed-out stage, a node lost
mid-deploy or a download error schedules a retry with exponential backoff (``retry_at``),
up to ``max_attempts``; only "nothing can be scheduled" makes a deployment FAILED, with the
reason per node and the set of nodes that were online, so the reconcile loop retries it
when capacity returns. A stale epoch (deleted or re-requested meanwhile) ends a run silently.

What is stored stays bounded however large the cluster (:mod:`.explanations`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cluster_orchestrator import planning
from cluster_orchestrator.artifacts import ArtifactCache
from cluster_orchestrator.cascade import selector_of, with_edge_stage
from cluster_orchestrator.deployments import (
    DeploymentBook,
    Superseded,
    job_sha,
    placement_of,
    serving_job,
    status_of,
)
from cluster_orchestrator.explanations import bounded_explanation, bounded_reasons
from cluster_orchestrator.liveness import backoff_delay
from cluster_orchestrator.models import LoadedModel, ModelCache, declared_shapes, profile_key, profiles_for
from cluster_orchestrator.mqtt_bus import MessageBus
from cluster_orchestrator.partition_records import record_partitions
from cluster_orchestrator.profiler import ProfileCollector, classes_to_profile
from cluster_orchestrator.rollout import RolloutPolicy, wants_canary
from cluster_orchestrator.rollout_runner import RolloutContext, RolloutRunner, keep_serving
from cluster_orchestrator.root_client import RootClient
from cluster_orchestrator.tracker import StageTracker
from deployment_descriptors import load_profile
from ml_scheduler.binding import BindingError
from ml_scheduler.costmodel import CostModel
from treeline_common import topics
from treeline_common.cascade import CascadeJob
from treeline_common.clock import Clock
from treeline_common.errors import TreelineError
from treeline_common.jobs import JobStatus, Placement, event

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class DeployerSettings:
    """``root_url``: where artifacts live now; ``margin``: how much better (fraction of the
    serving plan's predicted cost) an improvement must be to be adopted."""

    root_url: str
    artifact_base_url: str = ""  # where nodes fetch models and partitions: this cluster (default: root)
    data_secret: bytes = b""  # the cluster's data-plane secret (keys derive from it); empty: plain
    stage_timeout: float = 60.0
    profile_timeout: float = 30.0
    max_attempts: int = 5
    margin: float = 0.25
    retry_base: float = 0.5
    retry_cap: float = 15.0


@dataclass(frozen=True)
class Attempt:
    """Why a worker runs: the reconcile cause, whether it is an improvement, classes to re-profile."""

    cause: str
    improve: bool = False
    reprofile: frozenset[str] = frozenset()


class AttemptFailed(Exception):
    """This attempt failed for a reason worth retrying (download, stage, node lost, timeout)."""


class Deployer:
    """Runs attempts; owns no thread (the orchestrator starts one per attempt)."""

    def __init__(self, book: DeploymentBook, bus: MessageBus, root: RootClient, tracker: StageTracker,
                 nodes: Callable[[], list[dict[str, Any]]], on_change: Callable[[str], None],
                 settings: DeployerSettings, stop: threading.Event, clock: Clock,
                 profiles: ProfileCollector | None = None, models: ModelCache | None = None,
                 artifacts: ArtifactCache | None = None, rollouts: RolloutRunner | None = None,
                 training: Callable[[str, int], None] | None = None) -> None:
        self._book = book
        self._bus = bus
        self._root = root
        self._tracker = tracker
        self._nodes = nodes
        self._on_change = on_change
        self._settings = settings
        self._stop = stop
        self._clock = clock
        self._profiles = profiles
        self._models = models or ModelCache()
        self._artifacts = artifacts or ArtifactCache()
        self._rollouts = rollouts  # None: a new model version switches as soon as it is READY
        self._training = training  # runs an ml-training job (.training_runner); None: refused

    def _commit(self, deployment_id: str, epoch: int, **fields: Any) -> dict[str, Any]:
        doc = self._book.commit(deployment_id, epoch, **fields)
        self._on_change(deployment_id)
        return doc

    def run(self, deployment_id: str, epoch: int, attempt: Attempt) -> None:
        """One attempt; every outcome is committed (or the run was superseded)."""
        started = self._clock.monotonic()
        try:
            if (self._book.require(deployment_id).get("job") or {}).get("training"):
                if self._training is None:
                    raise AttemptFailed("this cluster cannot run training jobs")
                self._training(deployment_id, epoch)  # blocks this worker until the job ends
            else:
                self._attempt(deployment_id, epoch, attempt, started)
        except Superseded:
            log.info("deployment %s epoch %s superseded; worker stops", deployment_id, epoch)
        except Exception as exc:  # anything else is a failed attempt, retried
            if not isinstance(exc, AttemptFailed | TreelineError):
                log.exception("deployment %s: attempt failed", deployment_id)
            message = exc.message if isinstance(exc, TreelineError) else str(exc)
            with contextlib.suppress(Superseded):
                self._retry_later(deployment_id, epoch, attempt, message)

    # ---------------------------------------------------------------- the steps
    def _attempt(self, deployment_id: str, epoch: int, attempt: Attempt, started: float) -> None:
        doc = self._book.require(deployment_id)
        job = serving_job(doc)
        spec = planning.job_spec(job, self._settings.root_url)
        serving = placement_of(doc)
        loaded = self._fetch(spec)
        model = loaded.model
        nodes = self._nodes()
        online = sorted(n["node_id"] for n in nodes if n.get("online"))
        outcome = self._decide(spec, loaded, nodes, attempt)
        if not outcome.schedulable:
            self._unschedulable(deployment_id, epoch, attempt, outcome, online, serving)
            return
        old_cost = planning.plan_cost(serving.predicted) if serving else None
        new_cost = planning.plan_cost(outcome.predicted)
        if attempt.improve and serving is not None and not _better(new_cost, old_cost, self._settings.margin):
            self._commit(deployment_id, epoch, considered=online, drift_since=None, retry_at=None)
            self._book.add_event(deployment_id, event(
                self._clock.now(), "kept", attempt.cause, old_cost_ms=old_cost, new_cost_ms=new_cost,
                detail=f"new plan not better by {self._settings.margin:.0%}"))
            self._on_change(deployment_id)
            return
        generation = int(doc.get("generation", 0)) + 1
        placement = planning.build_placement(
            deployment_id, generation, outcome.strategy,
            planning.input_specs_for(spec, outcome.input_names, model),
            spec.output_names or outcome.output_names, outcome.partitions, outcome.node_ids,
            {n["node_id"]: n for n in nodes}, outcome.predicted, outcome.relay_node_id)
        if job.cascade is not None:  # SLA model.cascade: the small model's edge stage becomes the entry
            placement, why = with_edge_stage(placement, job.cascade, self._small_model(job.cascade), nodes,
                                             selector_of(spec.microservice.model.source))
            outcome = dataclasses.replace(outcome, explanation={**outcome.explanation, "cascade": why})
        self._publish(outcome)
        record_partitions(self._root, spec.model_name, spec.model_version, deployment_id, outcome.partitions,
                          outcome.predicted)
        self._command_and_wait(deployment_id, epoch, attempt, placement, outcome, spec, nodes)
        if serving is not None and not self._canary_passed(deployment_id, epoch, doc, serving, placement,
                                                            spec, nodes, online):
            return  # rolled back: the serving generation stays
        self._commit(deployment_id, epoch, status=JobStatus.RUNNING, status_detail="all stages ready",
                     placement=placement.with_states("READY").to_dict(), pending=None,
                     placed_at=self._clock.now(), considered=online, attempts=0, retry_at=None,
                     failed_capacity=None, drift_since=None, rollout=None,
                     # a refused version stays refused while the re-plan serves the previous one
                     rolled_back_model=doc.get("rolled_back_model") if job_sha(doc) != spec.model_sha256
                     else None,
                     serving_model=spec.model_sha256, serving_version=_label(spec),
                     serving_ref=dataclasses.asdict(job.model))
        self._book.add_event(deployment_id, event(
            self._clock.now(), "replan" if serving else "deployed", attempt.cause, generation=generation,
            old_cost_ms=old_cost, new_cost_ms=new_cost,
            duration_s=round(self._clock.monotonic() - started, 3),
            nodes=[s.node_name for s in placement.stages]))
        self._on_change(deployment_id)

    def _canary_passed(self, deployment_id: str, epoch: int, doc: dict[str, Any], serving: Placement,
                       new: Placement, spec: planning.JobSpec, nodes: list[dict[str, Any]],
                       online: list[str]) -> bool:
        """Whether the new generation may replace the serving one: True unless a canary
        (:mod:`.rollout`) is due and rolls it back."""
        policy = RolloutPolicy.of(spec.microservice)
        whole = serving.node_ids() <= set(online)
        serving_model = doc.get("serving_model")
        if self._rollouts is None or not wants_canary(policy, serving_model, spec.model_sha256, whole):
            return True
        settings = self._settings
        context = RolloutContext(settings.artifact_base_url or settings.root_url, settings.data_secret,
                                 spec.microservice, nodes, settings.stage_timeout)
        labels = (str(doc.get("serving_version") or str(serving_model)[:12]), _label(spec))
        return self._rollouts.run(deployment_id, epoch, serving, new, policy, context, labels)

    def _model_bytes(self, spec: planning.JobSpec) -> bytes:
        """The model from this cluster's artifact cache, else from the root (then cached)."""
        return self._artifacts.fetch(spec.model_sha256,
                                     lambda: self._root.download(spec.model_url, spec.model_sha256))

    def _small_model(self, cascade: CascadeJob) -> bytes:
        """A cascade's small model from this cluster's artifact cache, else from the root (then cached)."""
        sha = cascade.small_sha256.lower()
        return self._artifacts.fetch(sha, lambda: self._root.download(
            planning.artifact_url(self._settings.root_url, sha), sha))

    def _node_url(self, sha256: str) -> str:
        """Where nodes fetch an artifact: this cluster's cache (the root when none is configured)."""
        return planning.artifact_url(self._settings.artifact_base_url or self._settings.root_url, sha256)

    def _fetch(self, spec: planning.JobSpec) -> LoadedModel:
        """The model bound to the SLA's input shapes (:mod:`.models`); a bound model is put where
        nodes fetch artifacts, since they profile it."""
        try:
            loaded = self._models.get(spec.model_sha256, lambda: self._model_bytes(spec),
                                      declared_shapes(spec.input_specs))
        except BindingError as exc:
            raise AttemptFailed(f"the SLA's input shapes do not fit the model: "
                                f"microservice.model.{exc}") from None
        except TreelineError as exc:
            raise AttemptFailed(f"model download: {exc.message}") from None
        except Exception as exc:  # noqa: BLE001 - onnx parse errors have no common base
            raise AttemptFailed(f"model is not valid ONNX: {exc}") from None
        if loaded.data is not None:
            self._artifacts.put(loaded.sha256, loaded.data)
            if not self._settings.artifact_base_url:  # nodes fetch from the root
                try:
                    self._root.put_artifact(loaded.sha256, loaded.data)
                except TreelineError as exc:
                    raise AttemptFailed(f"bound model upload: {exc.message}") from None
        return loaded

    def _decide(self, spec: planning.JobSpec, loaded: LoadedModel, nodes: list[dict[str, Any]],
                attempt: Attempt) -> planning.PlanOutcome:
        profile = load_profile(spec.microservice.model.scheduler_profile)
        cost_model = self._cost_model(spec, loaded, nodes, attempt.reprofile)
        return planning.plan(loaded.model, loaded.graph, nodes, spec.microservice, profile, cost_model)

    def _publish(self, outcome: planning.PlanOutcome) -> None:
        """Partitions into this cluster's cache (nodes fetch them here), and a copy to the root,
        best effort: a root that is down must not stop a re-plan."""
        for part in outcome.partitions:
            self._artifacts.put(part.sha256, part.model_bytes)
        if not self._settings.artifact_base_url:
            try:
                for part in outcome.partitions:
                    self._root.put_artifact(part.sha256, part.model_bytes)
            except TreelineError as exc:
                raise AttemptFailed(f"partition upload: {exc.message}") from None
            return
        for part in outcome.partitions:
            try:
                self._root.put_artifact(part.sha256, part.model_bytes)
            except TreelineError as exc:
                log.info("partition %s not copied to the root (kept here): %s", part.sha256[:12], exc.message)
                return

    def _command_and_wait(self, deployment_id: str, epoch: int, attempt: Attempt, placement: Placement,
                          outcome: planning.PlanOutcome, spec: planning.JobSpec,
                          node_docs: list[dict[str, Any]]) -> None:
        base_url = self._settings.artifact_base_url or self._settings.root_url
        try:
            commands = planning.secured_commands(placement, base_url, self._settings.data_secret,
                                                 spec.microservice, node_docs)
        except planning.EncryptionUnavailable as exc:
            raise AttemptFailed(f"encrypted tensors asked: {exc}") from None
        doc = self._book.require(deployment_id)
        serving = status_of(doc) is JobStatus.RUNNING and doc.get("placement") is not None
        nodes = ", ".join(s.node_name for s in placement.stages)
        fields: dict[str, Any] = {"pending": placement.to_dict(), "generation": placement.generation,
                                  "reasons": bounded_reasons(outcome.reasons),
                                  "explanation": bounded_explanation(outcome.explanation, outcome.node_ids)}
        if not (attempt.improve and serving):
            fields.update(status=JobStatus.DEGRADED if doc.get("placement") else JobStatus.DEPLOYING,
                          status_detail=f"{attempt.cause}: bringing up {len(placement.stages)} stage(s) "
                                        f"on {nodes}")
        self._commit(deployment_id, epoch, **fields)
        self._tracker.expect(deployment_id, placement.generation, {cmd.stage: node for node, cmd in commands})
        try:
            for node_id, command in commands:
                self._bus.publish(topics.control_deploy(node_id), command)
            state, detail = self._tracker.wait(deployment_id, placement.generation,
                                               self._settings.stage_timeout, self._stop)
        finally:
            self._tracker.forget(deployment_id, placement.generation)
        if state == "SUPERSEDED":
            raise Superseded(deployment_id)
        if state != "READY":
            raise AttemptFailed(detail if state == "FAILED" else f"timed out waiting for stages: {detail}")

    # ---------------------------------------------------------------- outcomes
    def _unschedulable(self, deployment_id: str, epoch: int, attempt: Attempt, outcome: planning.PlanOutcome,
                       online: list[str], serving: Placement | None) -> None:
        reasons = bounded_reasons(outcome.reasons)
        detail = "; ".join(f"{n}: {r}" for n, r in sorted(reasons.items())) or "no online nodes"
        if attempt.improve and serving is not None:
            self._commit(deployment_id, epoch, considered=online, drift_since=None)
            self._book.add_event(deployment_id, event(self._clock.now(), "kept", attempt.cause,
                                                      detail=f"no other plan fits: {detail}"))
            return
        if keep_serving(self._book, self._clock, deployment_id, epoch, f"unschedulable: {detail}"):
            return
        self._commit(deployment_id, epoch, status=JobStatus.FAILED, status_detail=f"unschedulable: {detail}",
                     reasons=reasons, explanation=bounded_explanation(outcome.explanation, outcome.node_ids),
                     pending=None,
                     failed_capacity=online, retry_at=None)
        self._book.add_event(deployment_id, event(self._clock.now(), "failed", attempt.cause,
                                                  detail=f"unschedulable: {detail}"))

    def _retry_later(self, deployment_id: str, epoch: int, attempt: Attempt, reason: str) -> None:
        doc = self._book.require(deployment_id)
        attempts = int(doc.get("attempts") or 0) + 1
        serving = status_of(doc) is JobStatus.RUNNING and not attempt.improve
        if attempt.improve and status_of(doc) is JobStatus.RUNNING:
            # an improvement failed: keep serving the current plan, try again later
            delay = self._settings.retry_cap
            self._commit(deployment_id, epoch, pending=None, retry_at=self._clock.now() + delay,
                         considered=sorted(n["node_id"] for n in self._nodes() if n.get("online")))
            self._book.add_event(deployment_id, event(self._clock.now(), "kept", attempt.cause,
                                                      detail=f"re-plan failed: {reason}"))
            return
        if attempts >= self._settings.max_attempts:
            if keep_serving(self._book, self._clock, deployment_id, epoch,
                            f"failed after {attempts} attempts: {reason}"):
                return
            online = sorted(n["node_id"] for n in self._nodes() if n.get("online"))
            self._commit(deployment_id, epoch, status=JobStatus.FAILED, pending=None, attempts=attempts,
                         status_detail=f"failed after {attempts} attempts: {reason}", failed_capacity=online,
                         retry_at=None)
            self._book.add_event(deployment_id, event(self._clock.now(), "failed", attempt.cause,
                                                      detail=reason))
            return
        delay = backoff_delay(attempts - 1, self._settings.retry_base, self._settings.retry_cap)
        status = JobStatus.DEGRADED if (serving or doc.get("placement")) else JobStatus.REQUESTED
        self._commit(deployment_id, epoch, status=status, pending=None, attempts=attempts,
                     retry_at=self._clock.now() + delay,
                     status_detail=f"attempt {attempts}/{self._settings.max_attempts} failed ({reason}); "
                                   f"retrying in {delay:.1f} s")
        self._book.add_event(deployment_id, event(self._clock.now(), "retry", attempt.cause, detail=reason,
                                                  retry_in_s=delay))

    # ---------------------------------------------------------------- cost model
    def _cost_model(self, spec: planning.JobSpec, loaded: LoadedModel, nodes: list[dict[str, Any]],
                    reprofile: frozenset[str]) -> CostModel:
        """Op-time profiles for the model as bound (:mod:`.models`): those the root keeps (minus
        drifted classes), plus fresh ones for device classes that have none (one node per class
        measures the bound model; stored at the root under :func:`.models.profile_key`)."""
        cached = self._models.profiles(spec.model_sha256)
        try:
            cached.update(self._root.model_profiles(spec.model_name, spec.model_version))
            self._models.remember_profiles(spec.model_sha256, cached)
        except TreelineError as exc:
            log.warning("could not read stored profiles of %s v%s (using %d cached): %s",
                        spec.model_name, spec.model_version, len(cached), exc)
        stored = {k: v for k, v in profiles_for(loaded, cached).items() if k not in reprofile}
        missing = classes_to_profile(nodes, set(stored))
        if missing and self._profiles is not None:
            results = self._profiles.collect(self._bus.publish, missing, self._node_url(loaded.sha256),
                                             loaded.sha256, self._settings.profile_timeout, self._stop)
            for device_class, result in results.items():
                # stored under the registry version's digest (the root checks it); the key says bound
                body = {**dataclasses.asdict(result), "sha256": spec.model_sha256}
                stored[device_class] = body
                key = profile_key(device_class, loaded)
                self._models.remember_profiles(spec.model_sha256, {key: body})
                try:
                    self._root.put_model_profile(spec.model_name, spec.model_version, key, body)
                except TreelineError as exc:
                    log.warning("could not store the %s profile at the root: %s", key, exc)
        return CostModel.from_profiles(loaded.graph, stored)


def _label(spec: planning.JobSpec) -> str:
    """How events name a model: ``name vN`` (the digest's head when the job names no version)."""
    return f"{spec.model_name} v{spec.model_version}" if spec.model_name else spec.model_sha256[:12]


def _better(new: float | None, old: float | None, margin: float) -> bool:
    """Whether a new plan's predicted cost beats the old one's by ``margin`` (a fraction)."""
    if new is None:
        return False
    if old is None:
        return True
    return new < old * (1.0 - margin)
