"""Applications and services (Oakestra's paths and shapes): SLA submission, lookup, update,
deletion, instances.

An SLA is validated and viewed by ``deployment_descriptors.parse_sla`` (one definition of the
SLA for every part); each microservice becomes one service doc in status REQUESTED. Deploying
is a separate ``POST /api/service/<id>/instance``, as in Oakestra.

Tenancy: an application belongs to the user who submitted it (its ``userId``; the SLA's
``customerID`` is replaced by the caller's user id). Every route answers 404 for another
user's application, service, instance or events; admins see everything.
"""

from __future__ import annotations

import logging
import re
from dataclasses import replace
from typing import Any

from flask import Blueprint, jsonify, request

from deployment_descriptors import parse_sla
from root_orchestrator.api.context import ctx
from root_orchestrator.api.guard import (
    access,
    principal,
    visible_application,
    visible_service,
    visible_services,
)
from root_orchestrator.api.oakestra import application_view, listing, service_view
from root_orchestrator.auth.principals import OWNER
from root_orchestrator.training_sla import check_training_models
from treeline_common.errors import InvalidInput, NotFound
from treeline_common.http import json_body

log = logging.getLogger(__name__)

bp = Blueprint("applications", __name__)

APP_NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_-]{0,29}$")  # sla_v2.schema.json $defs/name
_UPDATABLE = ("application_name", "application_namespace", "application_desc")


@bp.post("/api/application/")
@access(OWNER)
def create_applications() -> Any:
    """200 with the created applications (Oakestra's array); 409 when the caller already has an
    application of one of the names; 404 naming ``...training.model`` when a training service's
    starting model does not resolve (nothing is stored)."""
    sla = replace(parse_sla(json_body(request)), customer_id=principal().id)
    check_training_models(sla, ctx().instances.resolve_model)
    return jsonify([application_view(doc) for doc in ctx().applier.create(sla)])


def _visible_apps(user_id: str | None = None) -> list[dict[str, Any]]:
    who = principal()
    if who.is_admin:
        return ctx().stores.applications.list_applications(user_id)
    if user_id not in (None, who.id):
        raise NotFound(f"user {user_id!r} not found", [{"path": "user_id", "message": "no such user"}])
    return ctx().stores.applications.list_applications(who.id)


@bp.get("/api/applications/")
@access(OWNER)
def list_applications() -> Any:
    """The caller's applications (every user's for admins)."""
    return listing("applications", [application_view(a) for a in _visible_apps()])


@bp.get("/api/applications/<user_id>")
@access(OWNER)
def list_user_applications(user_id: str) -> Any:
    """Oakestra's per-user listing: the caller's own id, or any for admins."""
    return listing("applications", [application_view(a) for a in _visible_apps(user_id)])


@bp.get("/api/application/<application_id>")
@access(OWNER)
def get_application(application_id: str) -> Any:
    return jsonify(application_view(visible_application(ctx().stores, application_id)))


@bp.put("/api/application/<application_id>")
@access(OWNER)
def update_application(application_id: str) -> Any:
    """Set ``application_name``, ``application_namespace`` and/or ``application_desc`` (other fields
    are ignored, as Oakestra does: microservices change with ``POST /api/apply``)."""
    visible_application(ctx().stores, application_id)
    body = json_body(request)
    fields = {k: body[k] for k in _UPDATABLE if k in body}
    problems = [{"path": k, "message": f"must match {APP_NAME_RE.pattern}"}
                for k in ("application_name", "application_namespace")
                if k in fields and not (isinstance(fields[k], str) and APP_NAME_RE.match(fields[k]))]
    if "application_desc" in fields and not isinstance(fields["application_desc"], str):
        problems.append({"path": "application_desc", "message": "must be a string"})
    if problems:
        raise InvalidInput("invalid application update", problems)
    doc = ctx().applier.rename(application_id, fields)
    return jsonify({"message": "Application is updated", **application_view(doc)})


@bp.delete("/api/application/<application_id>")
@access(OWNER)
def delete_application(application_id: str) -> Any:
    c = ctx()
    visible_application(c.stores, application_id)  # 404 before touching clusters
    failures = []
    for service in c.stores.applications.list_services(application_id):
        failures += c.instances.undeploy_all(service)
    services = c.stores.applications.delete_application(application_id)
    return jsonify({"message": "Application Deleted", "deleted": application_id,
                    "services": [s["service_id"] for s in services], "undeploy_failures": failures})


def _services_of(application_id: str | None) -> list[dict[str, Any]]:
    stores = ctx().stores
    if application_id is not None:
        visible_application(stores, application_id)
        return stores.applications.list_services(application_id)
    return visible_services(stores)


@bp.get("/api/services/")
@access(OWNER)
def list_services() -> Any:
    """The caller's services (query ``application_id``: one application's)."""
    return listing("services", [service_view(s) for s in _services_of(request.args.get("application_id"))])


@bp.get("/api/services/<application_id>")
@access(OWNER)
def list_application_services(application_id: str) -> Any:
    return listing("services", [service_view(s) for s in _services_of(application_id)])


@bp.get("/api/service/<service_id>")
@access(OWNER)
def get_service(service_id: str) -> Any:
    return jsonify(service_view(visible_service(ctx().stores, service_id)))


@bp.get("/api/service/<service_id>/events")
@access(OWNER)
def service_events(service_id: str) -> Any:
    """Re-plans (cause, old and new predicted cost, duration), retries and failures, oldest first."""
    visible_service(ctx().stores, service_id)
    return jsonify({"service_id": service_id, "events": ctx().instances.events(service_id)})


@bp.delete("/api/service/<service_id>")
@access(OWNER)
def delete_service(service_id: str) -> Any:
    c = ctx()
    failures = c.instances.undeploy_all(visible_service(c.stores, service_id))
    c.stores.applications.delete_service(service_id)
    return jsonify({"message": "Job deleted", "deleted": service_id, "undeploy_failures": failures})


@bp.post("/api/service/<service_id>/instance")
@access(OWNER)
def create_instance(service_id: str) -> Any:
    """200 ``{service_id, instance, cluster_id}`` (Oakestra's clients accept only 200)."""
    visible_service(ctx().stores, service_id)
    return jsonify(ctx().instances.create_instance(service_id))


@bp.delete("/api/service/<service_id>/instance/<int:instance>")
@access(OWNER)
def delete_instance(service_id: str, instance: int) -> Any:
    visible_service(ctx().stores, service_id)
    return jsonify(ctx().instances.delete_instance(service_id, instance))
