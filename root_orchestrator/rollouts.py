"""Rolling a service onto another model version in place (the cluster runs the canary).

When the model a service names resolves to another version than its instances serve (a new
version registered under ``latest``, an alias moved, the SLA's ``model.version`` changed), each
deployed instance gets its job again, with the new version, on the cluster it runs on and
under the same instance number. The cluster sees a new model for a RUNNING deployment and
rolls it out (``cluster_orchestrator.rollout``: canary, checks, promote or roll back); the
previous version serves throughout, so callers never see the service go away, unlike
:meth:`~.instances.InstanceManager.redeploy` (delete, then create).

:func:`roll` is what ``POST /api/apply`` calls for such services; its answer rows join the
apply answer's ``redeployed`` list with ``rollout: true`` and the model moved to.
"""

from __future__ import annotations

import logging
from typing import Any

from root_orchestrator.instance_docs import add_event as add_instance_event
from root_orchestrator.instance_docs import find_instance, mirror
from root_orchestrator.instances import InstanceManager
from treeline_common.errors import NotFound, TreelineError

log = logging.getLogger(__name__)

# instance states a re-sent job can update (a FAILED one is redeployed instead)
ROLLABLE = frozenset({"SCHEDULED", "DEPLOYING", "RUNNING", "DEGRADED"})


def owner_of(manager: InstanceManager, service: dict[str, Any]) -> str:
    """The user id of the service's application ("" when unknown)."""
    try:
        app = manager.stores.applications.get_application(str(service["application_id"]))
        return str(app.get("userId") or "")
    except NotFound:
        return ""


def stale_instances(manager: InstanceManager, service: dict[str, Any]) -> tuple[dict[str, Any] | None,
                                                                                list[dict[str, Any]]]:
    """``(model version the service names now, its deployed instances serving another one)``;
    ``(None, [])`` for a service without deployed instances (nothing is resolved then)."""
    deployed = [i for i in service.get("instances") or []
                if i.get("cluster_id") and i.get("status") in ROLLABLE]
    if not deployed:
        return None, []
    version = manager.resolve_model(service, owner_of(manager, service))
    # an instance whose cluster refused this very version (rolled back) is not sent it again
    return version, [i for i in deployed if (i.get("model") or {}).get("sha256") != version["sha256"]
                     and i.get("refused_model") != version["sha256"]]


def roll(manager: InstanceManager, service_id: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Send every stale instance of the service (:func:`stale_instances`) its job with the model the
    service names now. Returns ``(rolled, failures)``: ``[{old, new, cluster_id, rollout, model}]``
    (``old == new``: the instance keeps its number) and ``[{path, message}]``; an instance whose
    cluster refuses or cannot be reached keeps serving its version and is named in ``failures``."""
    service = manager.stores.applications.get_service(service_id)
    version, stale = stale_instances(manager, service)
    if version is None or not stale:
        return [], []
    resolved = {"name": version["name"], "version": version["version"], "sha256": version["sha256"]}
    label = f"{version['name']} v{version['version']}"
    rolled: list[dict[str, Any]] = []
    failures: list[dict[str, Any]] = []
    for inst in stale:
        number = int(inst["instance"])
        path = f"{service_id}/{number}"
        try:
            cluster = manager.stores.clusters.get(str(inst["cluster_id"]))
            job = manager.job_for(service, number, version)
            manager.client.deploy(cluster["url"], service_id, number, job)
        except TreelineError as exc:
            log.warning("could not roll %s onto %s: %s", path, label, exc)
            failures.append({"path": path, "message": f"rollout: {exc.code}: {exc}"})
            continue
        _record(manager, service_id, number, resolved, label)
        rolled.append({"old": number, "new": number, "cluster_id": inst["cluster_id"], "rollout": True,
                       "model": label})
        log.info("service %s instance %s: rolling out %s", service_id, number, label)
    return rolled, failures


def roll_alias(manager: InstanceManager, model_name: str, alias: str) -> list[dict[str, Any]]:
    """After ``alias`` of ``model_name`` moved (or was removed): :func:`roll` every deployed service
    whose SLA names the model by that alias, so the move rolls out (canary first) without another
    ``treeline apply``. Only an explicit alias move does this: a version registered under
    ``latest`` (e.g. an optimised variant) rolls out on the next apply, never by itself.
    Returns ``[{service_id, old, new, cluster_id, rollout, model}]``; failures are logged."""
    rolled: list[dict[str, Any]] = []
    for service in manager.stores.applications.list_services():
        model = service.get("model") or {}
        if model.get("name") != model_name or str(model.get("version", "latest")) != alias:
            continue
        service_id = str(service["service_id"])
        try:
            done, failed = roll(manager, service_id)
        except TreelineError as exc:  # e.g. the alias is gone: the instances keep their version
            log.warning("alias %s@%s moved; service %s not rolled: %s", model_name, alias, service_id, exc)
            continue
        for failure in failed:
            log.warning("alias %s@%s moved; %s: %s", model_name, alias, failure["path"], failure["message"])
        rolled += [{"service_id": service_id, **row} for row in done]
    return rolled


def _record(manager: InstanceManager, service_id: str, number: int, resolved: dict[str, Any],
            label: str) -> None:
    """The instance now asks for ``resolved`` (an event says so); the service names it as resolved."""
    event = {"ts": manager.clock.now(), "kind": "rollout_requested", "cause": f"model resolves to {label}",
             "model": resolved}

    def mutate(doc: dict[str, Any]) -> dict[str, Any] | None:
        instances = [dict(i) for i in doc.get("instances") or []]
        inst = find_instance(instances, number)
        if inst is None:
            return None
        inst["model"] = resolved
        add_instance_event(inst, event)
        model = {**(doc.get("model") or {}), "resolved": resolved}
        return mirror({"instances": instances, "model": model}, inst)

    manager.update_service(service_id, mutate)
