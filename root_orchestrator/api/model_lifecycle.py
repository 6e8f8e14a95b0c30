"""The registry's lifecycle routes: version metadata (``PATCH``), compare-and-set aliases, version
delete (refused while used) and the partitions clusters record.

Contracts (typed once in :mod:`treeline_common.registry`):

- ``PATCH /api/models/<name>/versions/<ref>``: a :class:`~treeline_common.registry.VersionUpdate`
  -> the version doc; 400 naming every bad field, 404 for a missing parent, 409 when the lineage
  is already set;
- ``PUT /api/models/<name>/aliases/<alias>``: ``{version, expected?}``; ``expected`` omitted moves
  unconditionally, an int or null (the alias must not exist) is compared and set atomically (409
  naming the current version otherwise); ``DELETE`` the same way; every change is an event
  (``GET /api/models/<name>/aliases``);
- ``DELETE /api/models/<name>/versions/<ref>``: 409 naming the services whose SLA resolves to the
  version (by number, alias or ``latest``) or whose active instance runs it; else the version goes,
  with its artifact when no other version points at it;
- ``PUT /api/models/<name>/versions/<ref>/partitions/<sha256>`` (clusters): a
  :class:`~treeline_common.registry.PartitionRecord`.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Blueprint, jsonify, request

from root_orchestrator.api.context import ctx
from root_orchestrator.api.guard import access, principal, visible_model
from root_orchestrator.auth.principals import INTERNAL, OWNER
from root_orchestrator.rollouts import roll_alias
from root_orchestrator.stores.base import check_alias, check_model_name, check_sha256
from treeline_common.errors import Conflict, InvalidInput, NotFound, TreelineError
from treeline_common.http import json_body
from treeline_common.jobs import ACTIVE
from treeline_common.registry import AliasMove, PartitionRecord, VersionUpdate

log = logging.getLogger(__name__)

bp = Blueprint("model_lifecycle", __name__)

VERSION_DEFAULTS: dict[str, Any] = {"tags": {}, "metrics": {}, "lineage": None}


def shown(doc: dict[str, Any]) -> dict[str, Any]:
    """A version doc as the API shows it (versions stored before tags existed get empty ones)."""
    return {**VERSION_DEFAULTS, **{k: v for k, v in doc.items()
                                   if v is not None or k not in VERSION_DEFAULTS}}


def _by() -> str:
    who = principal()
    return who.name if who.kind != "cluster" else f"cluster:{who.name}"


@bp.patch("/api/models/<name>/versions/<ref>")
@access(OWNER)
def update_version(name: str, ref: str) -> Any:
    """Description, tags, lineage (once), metrics of one version; see :class:`VersionUpdate`."""
    c = ctx()
    version = int(visible_model(c.stores, name, ref)["version"])
    update = VersionUpdate.from_body(json_body(request))
    if update.lineage is not None:  # the caller must be able to see the parent (404 otherwise)
        parent = update.lineage.parent
        try:
            visible_model(c.stores, parent.name, parent.version)
        except NotFound:
            ident = f"{parent.name}:{parent.version}"
            raise NotFound(f"parent {ident} not found",
                           [{"path": "lineage.parent", "message": f"no version {ident}"}]) from None
    if update.empty:
        return jsonify(shown(c.stores.models.get_version(name, version)))
    doc = c.stores.models.update_version(name, version, update)
    log.info("updated %s:%s (%s)", name, version, ", ".join(sorted(update.to_body())))
    return jsonify(shown(doc))


@bp.put("/api/models/<name>/aliases/<alias>")
@access(OWNER)
def set_alias(name: str, alias: str) -> Any:
    check_alias(alias)
    visible_model(ctx().stores, name)
    move = AliasMove.from_body(json_body(request))
    doc = ctx().stores.models.move_alias(name, alias, move.version, expected=move.expected,
                                         conditional=move.conditional, by=_by(), at=ctx().clock.now())
    # services that name the model by this alias roll onto the version it names now (canary first)
    return jsonify({**shown(doc), "rollouts": roll_alias(ctx().instances, name, alias)})


@bp.delete("/api/models/<name>/aliases/<alias>")
@access(OWNER)
def delete_alias(name: str, alias: str) -> Any:
    """Remove an alias; ``?expected=N`` only if it names version N (409 otherwise)."""
    check_alias(alias)
    visible_model(ctx().stores, name)
    raw = request.args.get("expected")
    conditional = raw is not None
    expected = None
    if raw is not None:
        if not raw.isdigit() or int(raw) < 1:
            raise InvalidInput("invalid expected version",
                               [{"path": "expected", "message": "not a version number"}])
        expected = int(raw)
    previous = ctx().stores.models.delete_alias(name, alias, expected=expected, conditional=conditional,
                                                by=_by(), at=ctx().clock.now())
    return jsonify({"name": name, "alias": alias, "deleted": True, "version": previous})


@bp.get("/api/models/<name>/aliases")
@access(OWNER)
def list_aliases(name: str) -> Any:
    """``{aliases: {alias: version}, events: [{alias, version, previous, by, at, seq}]}``."""
    c = ctx()
    visible_model(c.stores, name)
    models = c.stores.models.list_models()
    aliases: dict[str, int] = next((m["aliases"] for m in models if m["name"] == name), {})
    return jsonify({"name": name, "aliases": aliases, "events": c.stores.models.alias_events(name)})


@bp.delete("/api/models/<name>/versions/<ref>")
@access(OWNER)
def delete_version(name: str, ref: str) -> Any:
    check_model_name(name)
    c = ctx()
    version = int(visible_model(c.stores, name, ref)["version"])
    users = users_of(name, version)
    if users:
        raise_in_use(f"{name}:{version}", users)
    deleted = c.stores.models.delete_version(name, version, by=_by(), at=c.clock.now())
    dropped = sorted({deleted["sha256"]} - referenced_artifacts())
    for sha256 in dropped:
        c.stores.artifacts.delete(sha256)
    log.info("deleted %s:%s (artifacts deleted: %s)", name, version, dropped)
    return jsonify({"deleted": f"{name}:{version}", "name": name, "version": version,
                    "artifacts_deleted": dropped})


@bp.put("/api/models/<name>/versions/<ref>/partitions/<sha256>")
@access(INTERNAL)
def put_partition(name: str, ref: str, sha256: str) -> Any:
    check_sha256(sha256)
    c = ctx()
    version = int(c.stores.models.get_version(name, ref)["version"])
    record = PartitionRecord.from_body(json_body(request))
    return jsonify(c.stores.models.put_partition(name, version, sha256, record, at=c.clock.now()))


# -- who uses what ------------------------------------------------------------------------------------

def raise_in_use(what: str, users: list[tuple[str, dict[str, str]]]) -> None:
    """Conflict naming every ``(app/service, detail)`` of :func:`users_of`."""
    names = ", ".join(label for label, _ in users)
    raise Conflict(f"{what} is used by {len(users)} service(s): {names}", [detail for _, detail in users])


def referenced_artifacts() -> set[str]:
    """The sha256 of every version of every model still registered."""
    models = ctx().stores.models
    found: set[str] = set()
    for model in models.list_models():
        try:
            found.update(v["sha256"] for v in models.list_versions(model["name"]))
        except NotFound:  # deleted meanwhile
            continue
    return found


def _service_names() -> dict[str, str]:
    apps = ctx().stores.applications
    return {str(a.get("applicationID")): str(a.get("application_name")) for a in apps.list_applications()}


def services_using(name: str, version: int | None = None) -> list[dict[str, str]]:
    """``{path, message}`` per service that uses model ``name`` (see :func:`users_of`)."""
    return [detail for _, detail in users_of(name, version)]


def users_of(name: str, version: int | None = None) -> list[tuple[str, dict[str, str]]]:
    """``(app/service, {path, message})`` per service that uses model ``name`` (any version when
    ``version`` is None): its SLA names the model (resolving to ``version`` by number, alias or
    ``latest``), or one of its active instances runs that version."""
    c = ctx()
    app_names: dict[str, str] | None = None
    users = []
    for svc in c.stores.applications.list_services():
        why = _use(svc, name, version)
        if why is None:
            continue
        if app_names is None:
            app_names = _service_names()
        app_id = str(svc.get("application_id"))
        label = f"{app_names.get(app_id, app_id)}/{svc.get('microservice_name')}"
        users.append((label, {"path": f"services.{svc['service_id']}", "message": f"{label} {why}"}))
    return users


def _use(svc: dict[str, Any], name: str, version: int | None) -> str | None:
    """Why ``svc`` uses ``name`` (at ``version``), or None."""
    model = svc.get("model") or {}
    if model.get("name") == name:
        if version is None:
            return f"uses model {name!r}"
        ref = model.get("version", "latest")
        try:
            resolved = ctx().stores.models.get_version(name, ref if ref not in (None, "") else "latest")
        except TreelineError:  # a ref that names nothing (any more) uses no version
            resolved = None
        if resolved is not None and int(resolved["version"]) == version:
            return f"resolves model {name!r} ({ref}) to version {version}"
    for inst in svc.get("instances") or []:
        used = inst.get("model") or {}
        if (used.get("name") == name and (version is None or used.get("version") == version)
                and inst.get("status") in ACTIVE):
            return (f"runs {name}:{used.get('version')} "
                    f"(instance {inst.get('instance')}, {inst.get('status')})")
    return None
