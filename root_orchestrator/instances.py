"""Service instances: resolve the model, pick a cluster, forward the job, and fold cluster pushes back in.

This is the root's only orchestration logic, kept out of the Flask views so it reads as one
flow. Writes to a service go through the store's optimistic ``revision`` check and are retried
on Conflict, because a cluster's push (from its own thread) can land between our read and write.

Ordering: the instance is reserved (status REQUESTED, no cluster) *before* the job is forwarded,
so a cluster that pushes DEPLOYING before the forward returns finds its instance; the root then
only moves REQUESTED -> SCHEDULED and never regresses a status the cluster already reported.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from root_orchestrator.auth.principals import Role
from root_orchestrator.cluster_client import ClusterClient
from root_orchestrator.ranking import last_seen, rank_clusters
from root_orchestrator.stores import Stores
from root_orchestrator.stores.base import not_found
from treeline_common.clock import Clock
from treeline_common.errors import (
    Conflict,
    InvalidInput,
    NotFound,
    TreelineError,
    Unavailable,
    Unschedulable,
)
from treeline_common.jobs import ClusterPush, JobReport, JobRequest, JobStatus, ModelRef

log = logging.getLogger(__name__)

MAX_EVENTS = 200  # newest events kept per instance
ML_VIRTUALIZATION = "ml-model"
_RETRIES = 8

Mutator = Callable[[dict[str, Any]], dict[str, Any] | None]


def _mirror(fields: dict[str, Any], inst: dict[str, Any] | None) -> dict[str, Any]:
    """Service-level status fields follow the most recently changed instance."""
    if inst is None:
        fields.update(status="REQUESTED", status_detail="", cluster_id=None, placement=None,
                      explanation=None, caller_key="")
    else:
        fields.update(status=inst["status"], status_detail=inst.get("status_detail", ""),
                      cluster_id=inst.get("cluster_id"), placement=inst.get("placement"),
                      explanation=inst.get("explanation"), caller_key=inst.get("caller_key", ""))
    return fields


def _callers_sign(service: dict[str, Any]) -> bool:
    """Whether the service's SLA makes callers sign requests (a ``privacy`` block whose
    ``authenticate_callers`` is not false): only then does its owner need the caller key."""
    model = ((service.get("microservice") or {}).get("model") or {}) if isinstance(service, dict) else {}
    privacy = model.get("privacy") if isinstance(model, dict) else None
    return isinstance(privacy, dict) and privacy.get("authenticate_callers", True) is not False


def _find(instances: list[dict[str, Any]], instance: int) -> dict[str, Any] | None:
    return next((i for i in instances if i.get("instance") == instance), None)


class InstanceManager:
    def __init__(self, stores: Stores, clock: Clock, client: ClusterClient, public_url: str,
                 active_window_s: float) -> None:
        self.stores = stores
        self.clock = clock
        self.client = client
        self.public_url = public_url.rstrip("/")
        self.active_window_s = active_window_s

    def _update(self, service_id: str, mutate: Mutator) -> dict[str, Any]:
        """Read, compute fields with ``mutate`` (None = nothing to write), write under the
        revision check."""
        for _ in range(_RETRIES):
            doc = self.stores.applications.get_service(service_id)
            fields = mutate(doc)
            if fields is None:
                return doc
            try:
                return self.stores.applications.update_service(service_id, fields,
                                                               expected_revision=doc["revision"])
            except Conflict:
                log.debug("service %s changed concurrently; retrying", service_id)
        raise Conflict(f"service {service_id} keeps changing; try again",
                       [{"path": "service_id", "message": "busy"}])

    # -- create ---------------------------------------------------------------------------------------

    def may_use(self, owner: str, model_owner: str) -> bool:
        """Whether an application of user ``owner`` may deploy a model of ``model_owner``: its own
        models, any model for admins. Applications stored before users existed (their owner is
        no user id) are treated as an admin's."""
        if model_owner and model_owner == owner:
            return True
        try:
            roles = self.stores.users.get_user(owner).get("roles") or []
        except NotFound:
            return True
        return Role.ADMIN.value in roles

    def resolve_model(self, service: dict[str, Any], owner: str | None = None) -> dict[str, Any]:
        """The model version a service names; with ``owner`` (the application's user) a model that
        user may not use is NotFound, exactly like a missing one."""
        model = service.get("model")
        if service.get("virtualization") != ML_VIRTUALIZATION or not isinstance(model, dict):
            raise InvalidInput("only ml-model microservices can be deployed by Treeline",
                               [{"path": "virtualization",
                                 "message": f"is {service.get('virtualization')!r}, "
                                            f"expected {ML_VIRTUALIZATION!r}"}])
        name = str(model.get("name"))
        version = self.stores.models.get_version(name, model.get("version", "latest"))
        if owner is not None and not self.may_use(owner, str(version.get("owner") or "")):
            raise not_found("model", name, "model.name")
        if not self.stores.artifacts.exists(version["sha256"]):
            raise NotFound(f"artifact of model {version['name']} v{version['version']} is missing",
                           [{"path": "model.version", "message": f"no artifact {version['sha256']}"}])
        return version

    def ranked_clusters(self) -> list[dict[str, Any]]:
        """The active clusters, best first; Unschedulable naming each inactive one when none is."""
        now = self.clock.now()
        clusters = self.stores.clusters.list()
        ranked = rank_clusters(clusters, now, self.active_window_s)
        if not ranked:
            raise Unschedulable("no active cluster", [
                {"path": f"clusters.{c['cluster_name']}",
                 "message": f"last seen {now - last_seen(c):.0f} s ago"}
                for c in clusters] or [{"path": "clusters", "message": "no cluster registered"}])
        return ranked

    def create_instance(self, service_id: str) -> dict[str, Any]:
        service = self.stores.applications.get_service(service_id)
        try:
            app = self.stores.applications.get_application(str(service["application_id"]))
            owner = str(app.get("userId") or "")
        except NotFound:
            owner = ""
        version = self.resolve_model(service, owner)
        ranked = self.ranked_clusters()
        resolved = {"name": version["name"], "version": version["version"], "sha256": version["sha256"]}
        reserved: dict[str, int] = {}

        def reserve(doc: dict[str, Any]) -> dict[str, Any]:
            instances = list(doc.get("instances") or [])
            # Never reuse a number: a late push about a deleted instance must not land on its successor.
            number = max([int(i["instance"]) + 1 for i in instances] + [int(doc.get("next_instance") or 0)])
            inst = {"instance": number, "status": "REQUESTED", "status_detail": "", "cluster_id": None,
                    "placement": None, "model": resolved}
            reserved["n"] = number
            return _mirror({"instances": instances + [inst], "next_instance": number + 1,
                            "model": {**doc["model"], "resolved": resolved}}, inst)

        service = self._update(service_id, reserve)
        number = reserved["n"]
        job = JobRequest(service_id=service_id, instance=number,
                         microservice=service.get("microservice") or {},
                         model=ModelRef(name=str(version["name"]), version=int(version["version"]),
                                        sha256=str(version["sha256"]), signature=version.get("signature")),
                         root_url=self.public_url).to_dict()
        failures: list[dict[str, Any]] = []
        for cluster in ranked:
            try:
                self.client.deploy(cluster["url"], service_id, number, job)
            except TreelineError as exc:
                log.warning("cluster %s refused job %s/%s: %s",
                            cluster["cluster_name"], service_id, number, exc)
                failures.append({"path": f"clusters.{cluster['cluster_name']}",
                                 "message": f"{exc.code}: {exc}"})
                continue
            self._set_instance(service_id, number, cluster_id=cluster["cluster_id"], scheduled=True)
            log.info("service %s instance %s scheduled on cluster %s",
                     service_id, number, cluster["cluster_name"])
            return {"service_id": service_id, "instance": number, "cluster_id": cluster["cluster_id"]}
        detail = "no cluster accepted the job: " + "; ".join(f["message"] for f in failures)
        self._set_instance(service_id, number, status="FAILED", status_detail=detail)
        raise Unavailable("no cluster accepted the job", failures)

    def _set_instance(self, service_id: str, number: int, *, cluster_id: str | None = None,
                      scheduled: bool = False, status: str | None = None,
                      status_detail: str | None = None) -> None:
        def mutate(doc: dict[str, Any]) -> dict[str, Any] | None:
            instances = [dict(i) for i in doc.get("instances") or []]
            inst = _find(instances, number)
            if inst is None:  # deleted meanwhile
                return None
            if cluster_id is not None and inst.get("cluster_id") is None:
                inst["cluster_id"] = cluster_id
            if scheduled and inst["status"] == "REQUESTED":
                inst["status"] = "SCHEDULED"
            if status is not None:
                inst["status"] = status
            if status_detail is not None:
                inst["status_detail"] = status_detail
            return _mirror({"instances": instances}, inst)

        self._update(service_id, mutate)

    # -- delete ---------------------------------------------------------------------------------------

    def _undeploy(self, inst: dict[str, Any], service_id: str) -> None:
        cluster_id = inst.get("cluster_id")
        if not cluster_id:
            return
        try:
            cluster = self.stores.clusters.get(cluster_id)
        except NotFound:
            log.warning("instance %s/%s names unknown cluster %s", service_id, inst["instance"], cluster_id)
            return
        try:
            self.client.undeploy(cluster["url"], service_id, int(inst["instance"]))
        except NotFound:
            log.info("cluster %s no longer knows %s/%s", cluster_id, service_id, inst["instance"])

    def delete_instance(self, service_id: str, number: int) -> dict[str, Any]:
        service = self.stores.applications.get_service(service_id)
        inst = _find(service.get("instances") or [], number)
        if inst is None:
            raise NotFound(f"service {service_id} has no instance {number}",
                           [{"path": "instance", "message": f"no instance {number}"}])
        self._undeploy(inst, service_id)  # Unavailable propagates: keep the record so the operator can retry

        def remove(doc: dict[str, Any]) -> dict[str, Any]:
            remaining = [i for i in doc.get("instances") or [] if i.get("instance") != number]
            return _mirror({"instances": remaining}, remaining[-1] if remaining else None)

        self._update(service_id, remove)
        return {"service_id": service_id, "instance": number, "deleted": True}

    def redeploy(self, service_id: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Replace every instance of the service by a new one built from its current desired state.

        Deliberately the simplest correct way: each old instance is undeployed and deleted, then a
        new one is created (a fresh instance number, the model resolved again), so for a moment
        the service serves nothing. A rolling, make-before-break update is the lifecycle issue's
        job. Returns ``(replaced, failures)``: ``[{old, new, cluster_id}]`` and ``[{path,
        message}]``; an instance whose cluster cannot be reached is kept (as delete does) and named.
        """
        service = self.stores.applications.get_service(service_id)
        replaced: list[dict[str, Any]] = []
        failures: list[dict[str, Any]] = []
        for inst in service.get("instances") or []:
            number = int(inst["instance"])
            path = f"{service_id}/{number}"
            try:
                self.delete_instance(service_id, number)
            except NotFound:
                pass  # deleted meanwhile: still create its replacement
            except TreelineError as exc:
                log.warning("could not undeploy %s for a redeploy: %s", path, exc)
                failures.append({"path": path, "message": f"undeploy: {exc.code}: {exc}"})
                continue
            try:
                created = self.create_instance(service_id)
            except TreelineError as exc:
                log.warning("could not create the replacement of %s: %s", path, exc)
                failures.append({"path": path, "message": f"redeploy: {exc.code}: {exc}"})
                continue
            replaced.append({"old": number, "new": created["instance"],
                             "cluster_id": created["cluster_id"]})
        return replaced, failures

    def undeploy_all(self, service: dict[str, Any]) -> list[dict[str, Any]]:
        """Best effort before a service is deleted; returns the failures as ``{path, message}``."""
        failures = []
        for inst in service.get("instances") or []:
            try:
                self._undeploy(inst, service["service_id"])
            except TreelineError as exc:
                log.warning("could not undeploy %s/%s: %s", service["service_id"], inst["instance"], exc)
                failures.append({"path": f"{service['service_id']}/{inst['instance']}", "message": str(exc)})
        return failures

    # -- cluster push ---------------------------------------------------------------------------------

    def apply_push(self, cluster_id: str, body: Any) -> dict[str, Any]:
        """Fold a cluster's :class:`ClusterPush` in; InvalidInput names every bad field."""
        push = ClusterPush.from_dict(body)
        self.stores.clusters.update_aggregate(cluster_id, push.aggregate, self.clock.now())
        updated = 0
        ignored: list[dict[str, Any]] = []
        for index, job in enumerate(push.jobs):
            reason = self._apply_job(cluster_id, job)
            if reason is None:
                updated += 1
            else:
                log.warning("cluster %s push: jobs[%d] ignored: %s", cluster_id, index, reason)
                ignored.append({"path": f"jobs[{index}]", "message": reason})
        return {"updated": updated, "ignored": ignored}

    def _apply_job(self, cluster_id: str, job: JobReport) -> str | None:
        """Fold one job report into its service; returns why it was ignored, or None."""
        status = job.status
        if status is JobStatus.REQUESTED:
            # The cluster's REQUESTED means "accepted by this cluster": from the root's point of
            # view the instance is SCHEDULED (to that cluster), and must not move back.
            status = JobStatus.SCHEDULED
        outcome: list[str] = []

        def mutate(doc: dict[str, Any]) -> dict[str, Any] | None:
            instances = [dict(i) for i in doc.get("instances") or []]
            inst = _find(instances, job.instance)
            if inst is None:
                if status is not JobStatus.DELETED:  # a deleted instance's last reports are expected
                    outcome.append("unknown instance")
                return None
            if inst.get("cluster_id") not in (None, cluster_id):
                outcome.append(f"instance belongs to cluster {inst['cluster_id']}")
                return None
            inst.update(cluster_id=cluster_id, status=status.value, status_detail=job.status_detail)
            inst["placement"] = job.placement.to_dict() if job.placement else None
            if job.explanation is not None:
                inst["explanation"] = job.explanation  # the scheduler's reasons and scores
            if job.events:
                inst["events"] = _merge_events(inst.get("events") or [], job.events)
            if job.caller_key and _callers_sign(doc):  # only owners (and admins) see a service
                inst["caller_key"] = job.caller_key
            return _mirror({"instances": instances}, inst)

        try:
            self._update(job.service_id, mutate)
        except NotFound:
            return None if status is JobStatus.DELETED else "unknown service"
        return outcome[0] if outcome else None

    def events(self, service_id: str) -> list[dict[str, Any]]:
        """Every instance's events (re-plans with their cause and predicted costs, failures,
        retries), oldest first, each tagged with its instance."""
        service = self.stores.applications.get_service(service_id)
        merged = [dict(e, instance=inst.get("instance")) for inst in service.get("instances") or []
                  for e in inst.get("events") or []]
        return sorted(merged, key=lambda e: float(e.get("ts") or 0.0))


def _merge_events(known: list[dict[str, Any]], new: tuple[dict[str, Any], ...]) -> list[dict[str, Any]]:
    """Known events plus the new ones not seen yet (a cluster re-sends its recent events)."""
    seen = {(e.get("ts"), e.get("kind"), e.get("cause")) for e in known}
    merged = known + [dict(e) for e in new if (e.get("ts"), e.get("kind"), e.get("cause")) not in seen]
    return merged[-MAX_EVENTS:]
