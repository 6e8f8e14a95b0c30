"""Declarative, idempotent apply of an SLA (``POST /api/apply``): make the stored state match it.

Contract:

- An application is identified by ``(customerID, application_name)``, a service within it by
  ``microservice_name``. Applying the same SLA twice stores one application; the second apply
  answers ``unchanged`` and touches nothing.
- A microservice whose SLA block changed keeps its service id; its desired state (the stored
  SLA block, ``microservice``, and the views derived from it) is replaced in place, and every
  instance it has is re-deployed from the new state (:meth:`InstanceManager.redeploy`: delete,
  then create), unless only its model version or rollout block changed: then each instance is
  rolled onto the new version in place (:mod:`.rollouts`: the cluster runs a canary and the
  previous version serves until it is promoted). Added microservices become new
  services (REQUESTED, not deployed, as with ``POST /api/application/``); removed ones are
  undeployed and deleted, as ``DELETE /api/service/<id>`` does.
- An unchanged microservice whose model now resolves to another version (a new ``latest``, an
  alias moved) is rolled in place too; the answer is then ``updated`` with no ``changes``.
- A microservice whose declared model inputs (``model.inputs``) disagree with the registered
  model's signature is refused before anything is written (400, :mod:`.signature_check`).
- What an SLA cannot name unambiguously is refused before anything is written: two
  applications of one SLA with the same name (400), or a stored application or service that
  the key matches twice (409, naming the ids).
- Applies are serialized within one root process (a module lock), so two concurrent applies of
  one file cannot both create the application.

Each answer row is ``{applicationID, application_name, action, changes, microservices,
redeployed, failures}``; ``changes`` comes from :mod:`.sla_diff` with paths relative to the
application (``microservices[classifier].model.max_partitions``).
"""

from __future__ import annotations

import copy
import logging
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from deployment_descriptors import Application, Microservice, Sla
from root_orchestrator.instances import InstanceManager
from root_orchestrator.rollouts import roll
from root_orchestrator.signature_check import check_inputs
from root_orchestrator.sla_diff import Change, diff
from root_orchestrator.stores import Stores
from root_orchestrator.stores.base import APPLICATION_KEPT_FIELDS
from treeline_common.errors import Conflict, InvalidInput, TreelineError

log = logging.getLogger(__name__)

_APPLY_LOCK = threading.Lock()

CREATED, UPDATED, UNCHANGED = "created", "updated", "unchanged"


def service_doc(ms: Microservice) -> dict[str, Any]:
    """A new service doc for one SLA microservice (ids are added by the store)."""
    return {**desired_fields(ms), "status": "REQUESTED", "status_detail": "", "cluster_id": None,
            "placement": None, "instances": []}


def desired_fields(ms: Microservice) -> dict[str, Any]:
    """The fields of a service doc that come from its SLA block (its desired state)."""
    raw = copy.deepcopy(ms.raw)
    model = raw.get("model")
    return {
        "microservice_name": ms.name,
        "microservice_namespace": ms.namespace,
        "virtualization": ms.virtualization,
        "microservice": raw,
        "model": {**model, "resolved": None} if isinstance(model, dict) else None,
    }


def application_fields(app: Application) -> dict[str, Any]:
    """The application-level SLA fields (without its microservices and the ids the store owns)."""
    return {k: copy.deepcopy(v) for k, v in app.raw.items()
            if k != "microservices" and k not in APPLICATION_KEPT_FIELDS}


def ms_path(name: str) -> str:
    return f"microservices[{name}]"


@dataclass
class _Target:
    """One SLA application and what is stored under its key (None: not yet)."""

    index: int
    app: Application
    stored: dict[str, Any] | None
    services: dict[str, dict[str, Any]]


class Applier:
    """Applies SLAs over the stores; instance work goes through the :class:`InstanceManager`."""

    def __init__(self, stores: Stores, instances: InstanceManager) -> None:
        self.stores = stores
        self.instances = instances

    def apply(self, sla: Sla) -> list[dict[str, Any]]:
        """Apply every application of ``sla``; see the module docstring for the contract."""
        self.check_inputs(sla)
        with _APPLY_LOCK:
            targets = self._targets(sla)
            return [self._apply(sla.customer_id, t) for t in targets]

    def create(self, sla: Sla) -> list[dict[str, Any]]:
        """``POST /api/application/``: store every application of ``sla`` as new, under
        ``sla.customer_id``; Conflict (nothing stored) when that user already has an application of
        one of its names (``POST /api/apply`` is the way to update one)."""
        self.check_inputs(sla)
        with _APPLY_LOCK:
            taken = [{"path": f"applications[{i}].application_name",
                      "message": f"application {app.name!r} exists ("
                                 + ", ".join(a["applicationID"] for a in found)
                                 + "); use /api/apply to update it"}
                     for i, app in enumerate(sla.applications)
                     if (found := self.stores.applications.find_applications(sla.customer_id, app.name))]
            if taken:
                raise Conflict("an application of this name exists", taken)
            created = []
            for app in sla.applications:
                doc = self.stores.applications.create_application(
                    application_fields(app), [service_doc(ms) for ms in app.microservices], sla.customer_id)
                log.info("application %s (%s) created with %d services", doc["applicationID"], app.name,
                         len(doc["microservices"]))
                created.append(doc)
            return created

    def check_inputs(self, sla: Sla) -> None:
        """InvalidInput (nothing written) when a microservice's declared model inputs disagree
        with the registered model's signature (:mod:`.signature_check`)."""
        check_inputs(sla, self.stores.models, lambda model_owner: self.instances.may_use(sla.customer_id,
                                                                                           model_owner))

    def rename(self, application_id: str, fields: dict[str, Any]) -> dict[str, Any]:
        """``PUT /api/application/<id>``: set application-level fields; Conflict when the new name is
        another application's of the same user."""
        with _APPLY_LOCK:
            doc = self.stores.applications.get_application(application_id)
            name = fields.get("application_name")
            if name is not None and name != doc.get("application_name"):
                others = [a["applicationID"] for a in self.stores.applications.find_applications(
                    str(doc.get("userId")), str(name)) if a["applicationID"] != application_id]
                if others:
                    raise Conflict(f"application {name!r} exists", [
                        {"path": "application_name", "message": f"used by {', '.join(others)}"}])
            return self.stores.applications.update_application(application_id, fields)

    def _targets(self, sla: Sla) -> list[_Target]:
        """Look every application up by its key, refusing ambiguous keys before any write."""
        problems: list[dict[str, str]] = []
        seen: dict[str, int] = {}
        for index, app in enumerate(sla.applications):
            if app.name in seen:
                problems.append({"path": f"applications[{index}].application_name",
                                 "message": f"{app.name!r} is also applications[{seen[app.name]}]; "
                                            "apply identifies applications by name"})
            seen.setdefault(app.name, index)
            names: dict[str, int] = {}
            for m_index, ms in enumerate(app.microservices):
                if ms.name in names:
                    problems.append({
                        "path": f"applications[{index}].microservices[{m_index}].microservice_name",
                        "message": f"{ms.name!r} is also microservices[{names[ms.name]}]; "
                                   "apply identifies services by name"})
                names.setdefault(ms.name, m_index)
        if problems:
            raise InvalidInput("SLA cannot be applied: names are not unique", problems)
        targets: list[_Target] = []
        conflicts: list[dict[str, str]] = []
        for index, app in enumerate(sla.applications):
            found = self.stores.applications.find_applications(sla.customer_id, app.name)
            if len(found) > 1:
                conflicts.append({"path": f"applications[{index}].application_name",
                                  "message": f"{len(found)} stored applications of {sla.customer_id!r} "
                                             f"are named {app.name!r}: "
                                             + ", ".join(a["applicationID"] for a in found)})
                continue
            stored = found[0] if found else None
            services: dict[str, dict[str, Any]] = {}
            if stored is not None:
                for svc in self.stores.applications.list_services(stored["applicationID"]):
                    name = str(svc.get("microservice_name"))
                    if name in services:
                        conflicts.append({"path": f"applications[{index}].{ms_path(name)}",
                                          "message": f"services {services[name]['service_id']} and "
                                                     f"{svc['service_id']} share this name"})
                    services[name] = svc
            targets.append(_Target(index, app, stored, services))
        if conflicts:
            raise Conflict("SLA cannot be applied: stored objects share its names", conflicts)
        return targets

    def _apply(self, user: str, target: _Target) -> dict[str, Any]:
        app = target.app
        if target.stored is None:
            doc = self.stores.applications.create_application(
                application_fields(app), [service_doc(ms) for ms in app.microservices], user)
            log.info("apply: application %s (%s) created with %d services", doc["applicationID"],
                     app.name, len(doc["microservices"]))
            return _row(doc, CREATED, [], [], [])
        app_id = str(target.stored["applicationID"])
        stored_fields = {k: v for k, v in target.stored.items() if k not in APPLICATION_KEPT_FIELDS}
        changes = diff(stored_fields, application_fields(app))
        updated: list[tuple[dict[str, Any], Microservice]] = []
        added: list[Microservice] = []
        for ms in app.microservices:
            svc = target.services.get(ms.name)
            if svc is None:
                added.append(ms)
                changes.append({"path": ms_path(ms.name), "old": None, "new": copy.deepcopy(ms.raw)})
                continue
            found = diff(svc.get("microservice") or {}, ms.raw, ms_path(ms.name))
            if found:
                updated.append((svc, ms))
                changes += found
        wanted = {ms.name for ms in app.microservices}
        removed = [svc for name, svc in target.services.items() if name not in wanted]
        changes += [{"path": ms_path(str(svc["microservice_name"])), "old": svc.get("microservice"),
                     "new": None} for svc in removed]
        if not changes:
            rolled, failures = self._roll([str(svc["service_id"]) for svc in target.services.values()])
            if not rolled and not failures:
                return _row(target.stored, UNCHANGED, [], [], [])
            return _row(self.stores.applications.get_application(app_id), UPDATED, [], rolled, failures)
        return self._commit(app_id, app, changes, updated, added, removed)

    def _roll(self, service_ids: Iterable[str]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Roll each service onto the model version it names now (:func:`.rollouts.roll`)."""
        rolled: list[dict[str, Any]] = []
        failures: list[dict[str, Any]] = []
        for sid in service_ids:
            try:
                done, failed = roll(self.instances, sid)
            except TreelineError as exc:
                failures.append({"path": sid, "message": f"rollout: {exc.code}: {exc}"})
                continue
            rolled += [{"service_id": sid, **r} for r in done]
            failures += failed
        return rolled, failures

    def _commit(self, app_id: str, app: Application, changes: list[Change],
                updated: Iterable[tuple[dict[str, Any], Microservice]], added: Iterable[Microservice],
                removed: Iterable[dict[str, Any]]) -> dict[str, Any]:
        apps = self.stores.applications
        apps.update_application(app_id, application_fields(app))
        redeployed: list[dict[str, Any]] = []
        failures: list[dict[str, Any]] = []
        for svc, ms in updated:
            sid = str(svc["service_id"])
            apps.update_service(sid, desired_fields(ms))
            log.info("apply: service %s (%s) updated in place", sid, ms.name)
            if svc.get("instances") and _model_moved_only(changes, ms.name):
                rolled, failed = self._roll([sid])
                redeployed += rolled
                failures += failed
            elif svc.get("instances"):
                replaced, failed = self.instances.redeploy(sid)
                redeployed += [{"service_id": sid, **r} for r in replaced]
                failures += failed
        for ms in added:
            sid = apps.add_service(app_id, service_doc(ms))["service_id"]
            log.info("apply: service %s (%s) added", sid, ms.name)
        for svc in removed:
            failures += self.instances.undeploy_all(svc)
            apps.delete_service(str(svc["service_id"]))
            log.info("apply: service %s (%s) removed", svc["service_id"], svc["microservice_name"])
        return _row(apps.get_application(app_id), UPDATED, changes, redeployed, failures)


ROLLED_FIELDS = ("version", "rollout")  # model fields whose change rolls a service in place


def _model_moved_only(changes: list[Change], name: str) -> bool:
    """Whether every change of microservice ``name`` is to its model's version or rollout block."""
    prefix = f"{ms_path(name)}.model."
    own = [c for c in changes if str(c["path"]).startswith(ms_path(name))]
    return bool(own) and all(any(str(c["path"]) == prefix + f or str(c["path"]).startswith(prefix + f + ".")
                                 for f in ROLLED_FIELDS) for c in own)


def _row(doc: dict[str, Any], action: str, changes: list[Change], redeployed: list[dict[str, Any]],
         failures: list[dict[str, Any]]) -> dict[str, Any]:
    return {"applicationID": doc["applicationID"], "application_name": doc.get("application_name"),
            "action": action, "changes": changes, "microservices": list(doc.get("microservices") or []),
            "redeployed": redeployed, "failures": failures}
