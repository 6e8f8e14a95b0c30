"""Fold a cluster's information push into the services, and tell it what to let go.

``POST /api/information/<cluster_id>`` carries a :class:`~treeline_common.jobs.ClusterPush`:
the cluster's aggregate and one :class:`~treeline_common.jobs.JobReport` per deployment it
holds. Each report lands on its service instance under the store's revision check
(:meth:`InstanceManager._update`), with the rules of a hierarchy where deployments can move
between clusters (:mod:`.failover`):

- a report from the instance's cluster updates it (status, placement, explanation, events, and
  the model version its placement serves: ``model``, and the service's ``model.resolved``, follow
  what the cluster serves, so a rolled-back version never shows as deployed nor counts as in use);
- a report from the cluster the instance is *moving to* (``moving_to``) updates only the move
  (``move_status``) while the old cluster still serves, so requests keep their entry
  (make-before-break across clusters); when it reports RUNNING the instance switches over at once
  (cluster, placement and caller key), the old cluster is appended to ``moved_from`` and a
  ``moved`` event records how long the move took; a FAILED report abandons the move (the
  failover loop tries again, elsewhere if it can);
- a report from any other cluster, or about an instance or service that no longer exists, is
  answered with a ``release`` entry: that cluster deletes the deployment (a cluster that was
  out of touch while its deployments moved learns it here, and nobody serves it twice).

Answer: ``{updated, ignored: [{path, message}], release: [{service_id, instance, reason}]}``.
"""

from __future__ import annotations

import logging
from typing import Any

from root_orchestrator.instance_docs import MAX_EVENTS, add_event, find_instance, mirror
from root_orchestrator.instances import InstanceManager, callers_sign
from treeline_common.errors import NotFound
from treeline_common.jobs import ClusterPush, JobReport, JobStatus

log = logging.getLogger(__name__)


def apply_push(manager: InstanceManager, cluster_id: str, body: Any) -> dict[str, Any]:
    """Fold a cluster's :class:`ClusterPush` in; InvalidInput names every bad field."""
    push = ClusterPush.from_dict(body)
    manager.stores.clusters.update_aggregate(cluster_id, push.aggregate, manager.clock.now())
    updated = 0
    ignored: list[dict[str, Any]] = []
    release: list[dict[str, Any]] = []
    for index, job in enumerate(push.jobs):
        reason, let_go = _apply_job(manager, cluster_id, job)
        if reason is None:
            updated += 1
            continue
        if let_go:
            release.append({"service_id": job.service_id, "instance": job.instance, "reason": reason})
            log.info("cluster %s push: %s/%s released: %s", cluster_id, job.service_id, job.instance, reason)
        else:
            log.warning("cluster %s push: jobs[%d] ignored: %s", cluster_id, index, reason)
        ignored.append({"path": f"jobs[{index}]", "message": reason})
    return {"updated": updated, "ignored": ignored, "release": release}


def _report_fields(inst: dict[str, Any], job: JobReport, status: JobStatus, doc: dict[str, Any]) -> None:
    """What a report of the serving cluster sets on its instance."""
    inst.update(status=status.value, status_detail=job.status_detail)
    inst["placement"] = job.placement.to_dict() if job.placement else None
    if job.explanation is not None:
        inst["explanation"] = job.explanation  # the scheduler's reasons and scores
    if job.events:
        inst["events"] = merge_events(inst.get("events") or [], job.events)
    if job.caller_key and callers_sign(doc):  # only owners (and admins) see a service
        inst["caller_key"] = job.caller_key
    _serving_model(inst, job)


def _serving_model(inst: dict[str, Any], job: JobReport) -> None:
    """The instance's ``model`` is what its placement serves, as the cluster says (a rolled-back
    canary leaves the previous version serving); ``refused_model`` the digest it refused, if any."""
    if job.serving_model is not None:
        ref = job.serving_model
        current = inst.get("model") or {}
        if str(current.get("sha256", "")).lower() != ref.sha256.lower():
            inst["model"] = {"name": ref.name, "version": ref.version, "sha256": ref.sha256}
    inst["refused_model"] = job.refused_sha256 or None


def _service_model(doc: dict[str, Any], inst: dict[str, Any]) -> dict[str, Any]:
    """Service-level fields that follow the reporting instance: ``model.resolved`` is the
    version it serves (``treeline describe`` shows it)."""
    model = doc.get("model")
    served = inst.get("model")
    if not isinstance(model, dict) or not isinstance(served, dict) or model.get("resolved") == served:
        return {}
    return {"model": {**model, "resolved": served}}


def _move_report(manager: InstanceManager, inst: dict[str, Any], job: JobReport, status: JobStatus,
                 doc: dict[str, Any], cluster_id: str) -> None:
    """A report from the cluster the instance moves to (see the module docstring)."""
    now = manager.clock.now()
    old = inst.get("cluster_id")
    if status is JobStatus.RUNNING:
        _report_fields(inst, job, status, doc)
        started = float(inst.get("move_started") or now)
        inst.update(cluster_id=cluster_id, moving_to=None, move_status=None, move_started=None,
                    moved_from=[*list(inst.get("moved_from") or []), old])
        add_event(inst, {"ts": now, "kind": "moved", "cause": "cluster_failover", "from": old,
                         "to": cluster_id,
                         "duration_s": round(now - started, 3),
                         "message": f"now served by cluster {cluster_id}; {old} releases it when it returns"})
        log.info("%s/%s moved from cluster %s to %s in %.1f s", job.service_id, job.instance, old, cluster_id,
                 now - started)
    elif status in (JobStatus.FAILED, JobStatus.DELETED):
        inst.update(moving_to=None, move_status=None, move_started=None)
        add_event(inst, {"ts": now, "kind": "move_failed", "cause": "cluster_failover", "to": cluster_id,
                         "message": job.status_detail or status.value})
    else:
        inst["move_status"] = status.value
        if job.events:
            inst["events"] = merge_events(inst.get("events") or [], job.events)


def _apply_job(manager: InstanceManager, cluster_id: str, job: JobReport) -> tuple[str | None, bool]:
    """Fold one job report in: ``(why it was ignored or None, whether the cluster must release it)``."""
    status = job.status
    if status is JobStatus.REQUESTED:
        # The cluster's REQUESTED means "accepted by this cluster": from the root's point of
        # view the instance is SCHEDULED (to that cluster), and must not move back.
        status = JobStatus.SCHEDULED
    outcome: list[tuple[str, bool]] = []
    gone = status is JobStatus.DELETED  # a deleted deployment's last reports are expected

    def mutate(doc: dict[str, Any]) -> dict[str, Any] | None:
        instances = [dict(i) for i in doc.get("instances") or []]
        inst = find_instance(instances, job.instance)
        if inst is None:
            if not gone:
                outcome.append(("unknown instance", True))
            return None
        owner = inst.get("cluster_id")
        if inst.get("moving_to") == cluster_id and owner not in (None, cluster_id):
            _move_report(manager, inst, job, status, doc, cluster_id)
            return mirror({"instances": instances, **_service_model(doc, inst)}, inst)
        if owner not in (None, cluster_id):
            if not gone:
                outcome.append((f"instance belongs to cluster {owner}", True))
            return None
        inst["cluster_id"] = cluster_id
        _report_fields(inst, job, status, doc)
        return mirror({"instances": instances, **_service_model(doc, inst)}, inst)

    try:
        manager._update(job.service_id, mutate)
    except NotFound:
        return (None, False) if gone else ("unknown service", True)
    return outcome[0] if outcome else (None, False)


def merge_events(known: list[dict[str, Any]], new: tuple[dict[str, Any], ...]) -> list[dict[str, Any]]:
    """Known events plus the new ones not seen yet (a cluster re-sends its recent events)."""
    seen = {(e.get("ts"), e.get("kind"), e.get("cause")) for e in known}
    merged = known + [dict(e) for e in new if (e.get("ts"), e.get("kind"), e.get("cause")) not in seen]
    return merged[-MAX_EVENTS:]
