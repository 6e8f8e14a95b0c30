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

import root_orchestrator.training_hierarchy as hierarchy
from deployment_descriptors.views import callers_must_sign
from root_orchestrator.auth.principals import Role
from root_orchestrator.cascade import cascade_job
from root_orchestrator.cluster_choice import Choice, ClusterChooser
from root_orchestrator.cluster_client import ClusterClient
from root_orchestrator.cluster_filter import filter_clusters, needs_of
from root_orchestrator.instance_docs import add_event, find_instance, mirror
from root_orchestrator.ranking import is_active, last_seen, rank_clusters
from root_orchestrator.stores import Stores
from root_orchestrator.stores.base import not_found
from root_orchestrator.training_sla import training_model_error, training_spec_of
from root_orchestrator.variants import BASELINE, choose_variant, derived_from, fleet_device_class
from treeline_common.cascade import CascadeJob
from treeline_common.clock import Clock
from treeline_common.errors import (
    Conflict,
    InvalidInput,
    NotFound,
    TreelineError,
    Unavailable,
    Unschedulable,
)
from treeline_common.jobs import JobRequest, ModelRef
from treeline_common.training import TRAINING_VIRTUALIZATION

log = logging.getLogger(__name__)

ML_VIRTUALIZATION = "ml-model"
_RETRIES = 8

Mutator = Callable[[dict[str, Any]], dict[str, Any] | None]


def callers_sign(service: dict[str, Any]) -> bool:
    """Whether the service's SLA makes callers sign requests (a ``privacy`` block whose
    ``authenticate_callers`` is not false): only then does its owner need the caller key."""
    return isinstance(service, dict) and callers_must_sign(service.get("microservice"))


def objective_of(service: dict[str, Any]) -> str:
    model = (service.get("microservice") or {}).get("model") or {}
    return str(model.get("objective") or "latency") if isinstance(model, dict) else "latency"


class InstanceManager:
    """Creates, deletes and redeploys service instances; the cluster choice is
    :mod:`.cluster_filter` (filter, coarse order) then :class:`.ClusterChooser` (dry runs)."""

    def __init__(self, stores: Stores, clock: Clock, client: ClusterClient, public_url: str,
                 active_window_s: float, chooser: ClusterChooser | None = None) -> None:
        self.stores = stores
        self.clock = clock
        self.client = client
        self.public_url = public_url.rstrip("/")
        self.active_window_s = active_window_s
        self.chooser = chooser or ClusterChooser(client)

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

    def update_service(self, service_id: str, mutate: Mutator) -> dict[str, Any]:
        """A guarded read-modify-write of a service (as :meth:`_update`), for :mod:`.rollouts`."""
        return self._update(service_id, mutate)

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
        user may not use is NotFound, exactly like a missing one. A training service's starting
        version that does not resolve is NotFound naming ``training.model`` (:mod:`.training_sla`)."""
        model = service.get("model")
        if service.get("virtualization") == TRAINING_VIRTUALIZATION:  # training starts from a version
            spec = training_spec_of(service)
            try:
                return self._resolve({"name": spec.model_name, "version": spec.model_version}, owner)
            except NotFound as exc:
                raise training_model_error(exc, spec) from None
        if service.get("virtualization") != ML_VIRTUALIZATION or not isinstance(model, dict):
            raise InvalidInput("only ml-model and ml-training microservices can be deployed by Treeline",
                               [{"path": "virtualization",
                                 "message": f"is {service.get('virtualization')!r}, expected "
                                            f"{ML_VIRTUALIZATION!r} or {TRAINING_VIRTUALIZATION!r}"}])
        return self._resolve(model, owner)

    def _resolve(self, model: dict[str, Any], owner: str | None) -> dict[str, Any]:
        name = str(model.get("name"))
        # ``latest``: the newest version that is not an optimised variant of another (the store's rule)
        version = self.stores.models.get_version(name, model.get("version", "latest"))
        if owner is not None and not self.may_use(owner, str(version.get("owner") or "")):
            raise not_found("model", name, "model.name")
        version = self._variant_of(version, model)
        if not self.stores.artifacts.exists(version["sha256"]):
            raise NotFound(f"artifact of model {version['name']} v{version['version']} is missing",
                           [{"path": "model.version", "message": f"no artifact {version['sha256']}"}])
        return version

    def _variant_of(self, version: dict[str, Any], model: dict[str, Any]) -> dict[str, Any]:
        """The variant of ``version`` to deploy under the SLA's ``variants`` and ``accuracy_floor``
        (:func:`.variants.choose_variant`); ``version`` itself when the SLA allows only fp32. The
        choice and its reasons ride along as ``variant_choice``."""
        allowed = tuple(model.get("variants") or (BASELINE,))
        if allowed == (BASELINE,):
            return version
        derived = derived_from(self.stores.models.list_versions(str(version["name"])), version)
        if not derived:
            return version
        now = self.clock.now()
        active = [c for c in self.stores.clusters.list() if is_active(c, now, self.active_window_s)]
        chosen, why = choose_variant(version, derived, allowed, float(model.get("accuracy_floor") or 0.0),
                                     fleet_device_class(active))
        log.info("model %s v%s: deploying v%s (%s)", version["name"], version["version"], chosen["version"],
                 why["why"])
        return {**chosen, "variant_choice": why}

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

    def candidates(self, microservice: dict[str, Any], version: dict[str, Any],
                   exclude: tuple[str, ...] = ()) -> tuple[list[dict[str, Any]], dict[str, str]]:
        """The clusters that may take ``microservice`` (coarse order) and why the others may not;
        Unschedulable naming every cluster when none may ("no active cluster" when none is active)."""
        now = self.clock.now()
        clusters = self.stores.clusters.list()
        needs = needs_of(microservice, int(version.get("size") or 0))
        candidates, rejected = filter_clusters(clusters, needs, now, self.active_window_s, exclude)
        if candidates:
            return candidates, rejected
        if not clusters:
            raise Unschedulable("no active cluster",
                                [{"path": "clusters", "message": "no cluster registered"}])
        any_active = any(is_active(c, now, self.active_window_s) for c in clusters)
        message = "no cluster meets the SLA" if any_active else "no active cluster"
        details = [{"path": f"clusters.{name}", "message": reason}
                   for name, reason in sorted(rejected.items())]
        known = {str(c.get("cluster_name")) for c in clusters}
        details += [{"path": "constraints", "message": f"no cluster named {name!r} is registered "
                     f"(there are {', '.join(sorted(known))})"}
                    for name in sorted((needs.allowed or set()) - known)]
        raise Unschedulable(message, details)

    def job_for(self, service: dict[str, Any], number: int, version: dict[str, Any],
                cascade: CascadeJob | None = None) -> dict[str, Any]:
        """The :class:`JobRequest` (as a dict) of instance ``number`` of ``service``; a cascade
        (SLA ``model.cascade``) is resolved here unless given (:mod:`.cascade`)."""
        if cascade is None:
            cascade = cascade_job(self.stores, service.get("model"), version)
        return JobRequest(service_id=str(service["service_id"]), instance=number,
                          microservice=service.get("microservice") or {},
                          model=ModelRef(name=str(version["name"]), version=int(version["version"]),
                                         sha256=str(version["sha256"]), signature=version.get("signature")),
                          root_url=self.public_url, cascade=cascade,
                          training=training_spec_of(service)
                          if service.get("virtualization") == TRAINING_VIRTUALIZATION else None).to_dict()

    def create_instance(self, service_id: str) -> dict[str, Any]:
        service = self.stores.applications.get_service(service_id)
        try:
            app = self.stores.applications.get_application(str(service["application_id"]))
            owner = str(app.get("userId") or "")
        except NotFound:
            owner = ""
        version = self.resolve_model(service, owner)
        cascade = cascade_job(self.stores, service.get("model"), version)  # refused before an instance exists
        try:
            candidates, rejected = self.candidates(service.get("microservice") or {}, version)
        except Unschedulable as exc:  # say so on the service: `describe` shows why nothing runs
            reasons = "; ".join(f"{d.get('path')}: {d.get('message')}" for d in exc.details)
            detail = f"not deployed: {exc.message}: {reasons}"
            self._update(service_id, lambda doc: None if doc.get("instances") else {"status_detail": detail})
            raise
        resolved = {"name": version["name"], "version": version["version"], "sha256": version["sha256"],
                    **({"variant_choice": version["variant_choice"]} if "variant_choice" in version else {})}
        if hierarchy.is_hierarchical(service):  # a root part and one part per participating cluster
            return hierarchy.create_hierarchical(self, service, version, resolved, candidates, rejected)
        reserved: dict[str, int] = {}

        def reserve(doc: dict[str, Any]) -> dict[str, Any]:
            instances = list(doc.get("instances") or [])
            # Never reuse a number: a late push about a deleted instance must not land on its successor.
            number = max([int(i["instance"]) + 1 for i in instances] + [int(doc.get("next_instance") or 0)])
            inst = {"instance": number, "status": "REQUESTED", "status_detail": "", "cluster_id": None,
                    "placement": None, "model": resolved}
            reserved["n"] = number
            return mirror({"instances": instances + [inst], "next_instance": number + 1,
                            "model": {**(doc.get("model") or {}), "resolved": resolved}}, inst)

        service = self._update(service_id, reserve)
        number = reserved["n"]
        job = self.job_for(service, number, version, cascade)
        if job.get("training"):  # no dry-run plan for a training job: the coarse order decides
            choice = Choice(tuple(candidates), rejected=rejected)
        else:
            choice = self.chooser.choose(candidates, job, objective_of(service), rejected)
        failures: list[dict[str, Any]] = []
        for cluster in choice.order:
            try:
                self.client.deploy(cluster["url"], service_id, number, job)
            except TreelineError as exc:
                log.warning("cluster %s refused job %s/%s: %s",
                            cluster["cluster_name"], service_id, number, exc)
                failures.append({"path": f"clusters.{cluster['cluster_name']}",
                                 "message": f"{exc.code}: {exc}"})
                continue
            self.set_instance(service_id, number, cluster_id=cluster["cluster_id"], scheduled=True,
                               event=choice.event(cluster, "deploy", self.clock.now()))
            log.info("service %s instance %s scheduled on cluster %s",
                     service_id, number, cluster["cluster_name"])
            return {"service_id": service_id, "instance": number, "cluster_id": cluster["cluster_id"],
                    "cluster_name": cluster["cluster_name"]}
        detail = "no cluster accepted the job: " + "; ".join(f["message"] for f in failures)
        self.set_instance(service_id, number, status="FAILED", status_detail=detail,
                           event=choice.event(None, "deploy", self.clock.now()))
        raise Unavailable("no cluster accepted the job", failures)

    def set_instance(self, service_id: str, number: int, *, cluster_id: str | None = None,
                     scheduled: bool = False, status: str | None = None,
                     status_detail: str | None = None, event: dict[str, Any] | None = None) -> None:
        """Instance ``number``: its cluster (if it has none yet), SCHEDULED (if REQUESTED), a status
        and detail, an event; nothing when it was deleted meanwhile."""
        def mutate(doc: dict[str, Any]) -> dict[str, Any] | None:
            instances = [dict(i) for i in doc.get("instances") or []]
            inst = find_instance(instances, number)
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
            if event is not None:
                add_event(inst, event)
            return mirror({"instances": instances}, inst)

        self._update(service_id, mutate)

    # -- delete ---------------------------------------------------------------------------------------

    def _undeploy(self, inst: dict[str, Any], service_id: str) -> None:
        """Undeploy from the instance's cluster and from the one it is moving to. An inactive
        cluster is not called: it learns from the answer to its next push (``release``)."""
        for cluster_id in dict.fromkeys(c for c in (inst.get("cluster_id"), inst.get("moving_to")) if c):
            self._undeploy_on(str(cluster_id), inst, service_id)

    def _undeploy_on(self, cluster_id: str, inst: dict[str, Any], service_id: str) -> None:
        try:
            cluster = self.stores.clusters.get(cluster_id)
        except NotFound:
            log.warning("instance %s/%s names unknown cluster %s", service_id, inst["instance"], cluster_id)
            return
        if not is_active(cluster, self.clock.now(), self.active_window_s):
            log.info("cluster %s is inactive: it releases %s/%s on its next push",
                     cluster.get("cluster_name"), service_id, inst["instance"])
            return
        try:
            self.client.undeploy(cluster["url"], service_id, int(inst["instance"]))
        except NotFound:
            log.info("cluster %s no longer knows %s/%s", cluster_id, service_id, inst["instance"])

    def delete_instance(self, service_id: str, number: int) -> dict[str, Any]:
        service = self.stores.applications.get_service(service_id)
        inst = find_instance(service.get("instances") or [], number)
        if inst is None:
            raise NotFound(f"service {service_id} has no instance {number}",
                           [{"path": "instance", "message": f"no instance {number}"}])
        self._undeploy(inst, service_id)  # Unavailable propagates: keep the record so the operator can retry

        def remove(doc: dict[str, Any]) -> dict[str, Any]:
            remaining = [i for i in doc.get("instances") or [] if i.get("instance") != number]
            return mirror({"instances": remaining}, remaining[-1] if remaining else None)

        self._update(service_id, remove)
        hierarchy.delete_cluster_parts(self, service, number)  # a hierarchical training root part's
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

    def events(self, service_id: str) -> list[dict[str, Any]]:
        """Every instance's events (re-plans with their cause and predicted costs, failures,
        retries), oldest first, each tagged with its instance."""
        service = self.stores.applications.get_service(service_id)
        merged = [dict(e, instance=inst.get("instance")) for inst in service.get("instances") or []
                  for e in inst.get("events") or []]
        return sorted(merged, key=lambda e: float(e.get("ts") or 0.0))

