"""Deployment documents and the guarded writes that change them (Nomad-style plan apply).

A deployment document (desired state; the observed state is in the node documents)::

    {deployment_id, service_id, instance, job, status, status_detail,
     placement,        # the serving plan (treeline_common.jobs.Placement as a dict)
     pending,          # the generation being brought up (make-before-break), or None
     rollout,          # a canary in progress (cluster_orchestrator.rollout), or None
     serving_model, serving_version, rolled_back_model,  # model digests: served / refused by a canary
     serving_ref,      # the ModelRef (as a dict) the placement serves: re-plans of a refused job use it
     generation, epoch, attempts, retry_at, placed_at, considered, failed_capacity,
     drift_since, events, reasons, explanation, created_at, updated_at, version}

``epoch`` names the current *intent*: it is bumped by every new request (submit, delete,
re-plan). A worker captures the epoch it was started for and commits through
:meth:`DeploymentBook.commit`, which refuses (:class:`Superseded`) once the epoch moved on,
so a stale worker can never overwrite a newer decision. Store-level version conflicts from
concurrent writers (stage-state updates) are retried transparently.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from cluster_orchestrator.reconcile import DesiredDeployment
from cluster_orchestrator.rollout import router_of
from cluster_orchestrator.store import ClusterStateStore, Doc
from treeline_common import wire
from treeline_common.clock import Clock
from treeline_common.errors import Conflict, NotFound
from treeline_common.jobs import ACTIVE, JobReport, JobRequest, JobStatus, ModelRef, Placement

log = logging.getLogger(__name__)

MAX_EVENTS = 100  # newest events kept per deployment


class Superseded(Exception):
    """The deployment was deleted or re-requested after this worker started."""


class DeploymentBook:
    """All reads and writes of deployment documents go through here."""

    def __init__(self, store: ClusterStateStore, clock: Clock) -> None:
        self._store = store
        self._clock = clock

    def get(self, deployment_id: str) -> Doc | None:
        return self._store.get_deployment(deployment_id)

    def require(self, deployment_id: str) -> Doc:
        doc = self._store.get_deployment(deployment_id)
        if doc is None:
            raise NotFound(f"deployment {deployment_id} not found")
        return doc

    def list_deployments(self) -> list[Doc]:
        """All deployment documents, ordered by id."""
        return self._store.list_deployments()

    def _write(self, deployment_id: str, change: Callable[[Doc | None], Doc | None],
               attempts: int = 20) -> Doc | None:
        """Read-modify-write with the store's version check, retried on concurrent writes."""
        for _ in range(attempts):
            current = self._store.get_deployment(deployment_id)
            expected = int(current["version"]) if current else 0
            updated = change(dict(current) if current else None)
            if updated is None:
                return current
            updated["updated_at"] = self._clock.now()
            try:
                return self._store.put_deployment(updated, expected_version=expected)
            except Conflict:
                continue
        raise Conflict(f"deployment {deployment_id}: too many concurrent writes")

    def request(self, deployment_id: str, build: Callable[[Doc | None], Doc | None]) -> Doc | None:
        """Record a new intent: ``build(current)`` returns the new document (or None to keep
        the current one); its epoch is bumped so running workers become stale."""
        def change(current: Doc | None) -> Doc | None:
            new = build(current)
            if new is None:
                return None
            new["epoch"] = int((current or {}).get("epoch", 0)) + 1
            new.setdefault("created_at", self._clock.now())
            return new
        return self._write(deployment_id, change)

    def commit(self, deployment_id: str, epoch: int, **fields: Any) -> Doc:
        """Set ``fields`` if the deployment still has ``epoch``; raise Superseded otherwise."""
        def change(current: Doc | None) -> Doc:
            if current is None or int(current.get("epoch", 0)) != epoch or \
                    current.get("status") == JobStatus.DELETED.value:
                raise Superseded(deployment_id)
            current.update({k: (v.value if isinstance(v, JobStatus) else v) for k, v in fields.items()})
            return current
        doc = self._write(deployment_id, change)
        assert doc is not None
        log.info("deployment %s -> %s %s", deployment_id, doc.get("status"), doc.get("status_detail") or "")
        return doc

    def set_stage_state(self, deployment_id: str, generation: int, index: int, state: str,
                        reason: str = "") -> Doc | None:
        """Record a node's stage report on the placement (serving or pending) of that generation."""
        def change(current: Doc | None) -> Doc | None:
            if not current:
                return None
            for slot in ("placement", "pending"):
                placement = current.get(slot) or {}
                if int(placement.get("generation", -1)) != generation:
                    continue
                relay = [placement["relay"]] if placement.get("relay") else []
                for stage in [*placement.get("stages", []), *relay]:
                    if int(stage["index"]) == index:
                        if stage.get("state") == state and not reason:
                            return None
                        stage["state"] = state
                        if reason:
                            stage["reason"] = reason
                        return current
            return None
        return self._write(deployment_id, change)

    def add_event(self, deployment_id: str, event: Mapping[str, Any]) -> None:
        """Append an event (re-plan, failure, recovery) to the deployment, newest last, capped."""
        def change(current: Doc | None) -> Doc | None:
            if current is None:
                return None
            current["events"] = [*(current.get("events") or []), dict(event)][-MAX_EVENTS:]
            return current
        self._write(deployment_id, change)


def status_of(doc: Mapping[str, Any]) -> JobStatus:
    """The document's status as the enum (unknown words read as FAILED, logged)."""
    try:
        return JobStatus(str(doc.get("status")))  # a missing status ("None") is unknown too
    except ValueError:
        log.warning("deployment %s has unknown status %r", doc.get("deployment_id"), doc.get("status"))
        return JobStatus.FAILED


def placement_of(doc: Mapping[str, Any], slot: str = "placement") -> Placement | None:
    """The typed serving (``placement``) or ``pending`` plan of a document, or None."""
    body = doc.get(slot)
    return Placement.from_dict(body) if body else None


def desired_of(doc: Mapping[str, Any]) -> DesiredDeployment:
    """The reconcile rule's view of a deployment document."""
    capacity = doc.get("failed_capacity")
    return DesiredDeployment(
        deployment_id=str(doc["deployment_id"]),
        status=status_of(doc),
        placement=placement_of(doc),
        pending=placement_of(doc, "pending"),
        retry_at=doc.get("retry_at"),
        placed_at=float(doc.get("placed_at") or 0.0),
        considered=frozenset(doc.get("considered") or ()),
        failed_capacity=frozenset(capacity) if capacity is not None else None,
        drift_since=doc.get("drift_since"),
        router=router_of(doc),
        rolled_back=refused(doc),
    )


def job_sha(doc: Mapping[str, Any]) -> str | None:
    """The model digest the deployment's job asks for (None when the document has no job)."""
    sha = ((doc.get("job") or {}).get("model") or {}).get("sha256")
    return str(sha).lower() if sha else None


def refused(doc: Mapping[str, Any]) -> bool:
    """Whether the job's model was refused by its canary (or could not be brought up) and the
    deployment serves the previous version instead."""
    return bool(doc.get("rolled_back_model")) and str(doc.get("rolled_back_model")).lower() == job_sha(doc)


def serving_ref(doc: Mapping[str, Any]) -> ModelRef | None:
    """The registry version the serving placement was built from (None: unknown, as for
    placements made before it was recorded, or a malformed record)."""
    body = doc.get("serving_ref")
    if not isinstance(body, Mapping) or str(body.get("sha256", "")).lower() != doc.get("serving_model"):
        return None
    try:
        return wire.from_dict(ModelRef, body)
    except wire.WireError:
        log.warning("deployment %s: unreadable serving_ref %r", doc.get("deployment_id"), body)
        return None


def serving_job(doc: Mapping[str, Any]) -> JobRequest:
    """The job a deployment worker plans: the desired job, except that a job whose model was
    refused (:func:`refused`) plans the version that serves (when known). So a re-plan for a
    repair or a node that moved (after a restart) brings the serving version up again instead
    of retrying the refused one; a new request (another model) clears the refusal."""
    job = JobRequest.from_dict(doc["job"])
    ref = serving_ref(doc) if refused(doc) else None
    return replace(job, model=ref) if ref is not None else job


def is_active(doc: Mapping[str, Any]) -> bool:
    return status_of(doc) in ACTIVE


def job_report(doc: Mapping[str, Any]) -> JobReport:
    """One entry of the root push's ``jobs`` list."""
    return JobReport(
        service_id=str(doc.get("service_id")),
        instance=int(doc.get("instance") or 0),
        status=status_of(doc),
        status_detail=str(doc.get("status_detail") or ""),
        placement=placement_of(doc),
        explanation=doc.get("explanation"),
        generation=int(doc.get("generation") or 0),
        events=tuple(doc.get("events") or ())[-20:],
        serving_model=serving_ref(doc),
        refused_sha256=(job_sha(doc) or "") if refused(doc) else "",
    )


def deployment_view(doc: Mapping[str, Any]) -> dict[str, Any]:
    """``GET /api/deployments/<service_id>/<instance>`` answer (contract fields plus a few more)."""
    return {
        "status": doc.get("status"),
        "status_detail": doc.get("status_detail") or "",
        "placement": doc.get("placement"),
        "pending": doc.get("pending"),
        "rollout": doc.get("rollout"),
        "serving_version": doc.get("serving_version"),
        "deployment_id": doc.get("deployment_id"),
        "service_id": doc.get("service_id"),
        "instance": doc.get("instance"),
        "generation": doc.get("generation", 0),
        "attempts": doc.get("attempts", 0),
        "retry_at": doc.get("retry_at"),
        "reasons": doc.get("reasons") or {},
        "explanation": doc.get("explanation"),
        "events": doc.get("events") or [],
        "updated_at": doc.get("updated_at"),
    }
