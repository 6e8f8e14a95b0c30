"""Deployment documents and the guarded writes that change them (Nomad-style plan apply).

A deployment document::

    {deployment_id, service_id, instance, job, status, status_detail, placement, generation,
     epoch, reasons, created_at, updated_at, version}

``epoch`` names the current *intent*: it is bumped by every new request (submit, delete,
re-plan). A worker captures the epoch it was started for and commits through
:meth:`DeploymentBook.commit`, which refuses (:class:`Superseded`) once the epoch moved on,
so a stale worker can never overwrite a newer decision. Store-level version conflicts from
concurrent writers (stage-state updates) are retried transparently.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from cluster_orchestrator.store import ClusterStateStore, Doc
from treeline_common.clock import Clock
from treeline_common.errors import Conflict, NotFound

log = logging.getLogger(__name__)

REQUESTED = "REQUESTED"
SCHEDULED = "SCHEDULED"
DEPLOYING = "DEPLOYING"
RUNNING = "RUNNING"
DEGRADED = "DEGRADED"
FAILED = "FAILED"
DELETED = "DELETED"

IN_PROGRESS = (REQUESTED, SCHEDULED, DEPLOYING, DEGRADED)
ACTIVE = (*IN_PROGRESS, RUNNING)


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

    def list(self) -> list[Doc]:
        return self._store.list_deployments()

    def _write(self, deployment_id: str, change: Callable[[Doc | None], Doc | None], attempts: int = 20) -> Doc | None:
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
            if current is None or int(current.get("epoch", 0)) != epoch or current.get("status") == DELETED:
                raise Superseded(deployment_id)
            current.update(fields)
            return current
        doc = self._write(deployment_id, change)
        assert doc is not None
        log.info("deployment %s -> %s %s", deployment_id, doc.get("status"), doc.get("status_detail") or "")
        return doc

    def set_stage_state(self, deployment_id: str, generation: int, index: int, state: str,
                        reason: str = "") -> Doc | None:
        """Record a node's stage report on the placement of that generation (others are stale)."""
        def change(current: Doc | None) -> Doc | None:
            placement = (current or {}).get("placement") or {}
            if not current or int(placement.get("generation", -1)) != generation:
                return None
            for stage in placement.get("stages", []):
                if int(stage["index"]) == index:
                    if stage.get("state") == state and not reason:
                        return None
                    stage["state"] = state
                    if reason:
                        stage["reason"] = reason
                    return current
            return None
        return self._write(deployment_id, change)


def job_view(doc: Mapping[str, Any]) -> dict[str, Any]:
    """One entry of the root push's ``jobs`` list."""
    return {
        "service_id": doc.get("service_id"),
        "instance": doc.get("instance"),
        "status": doc.get("status"),
        "status_detail": doc.get("status_detail") or "",
        "placement": doc.get("placement"),
        "explanation": doc.get("explanation"),
    }


def deployment_view(doc: Mapping[str, Any]) -> dict[str, Any]:
    """``GET /api/deployments/<service_id>/<instance>`` answer (contract fields plus a few more)."""
    return {
        "status": doc.get("status"),
        "status_detail": doc.get("status_detail") or "",
        "placement": doc.get("placement"),
        "deployment_id": doc.get("deployment_id"),
        "service_id": doc.get("service_id"),
        "instance": doc.get("instance"),
        "generation": doc.get("generation", 0),
        "reasons": doc.get("reasons") or {},
        "explanation": doc.get("explanation"),
        "updated_at": doc.get("updated_at"),
    }
