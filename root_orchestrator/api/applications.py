"""Applications and services (Oakestra's paths): SLA submission, lookup, deletion, instances.

An SLA is validated and viewed by ``deployment_descriptors.parse_sla`` (one definition of the
SLA for every part); each microservice becomes one service doc in status REQUESTED. Deploying
is a separate ``POST /api/service/<id>/instance``, as in Oakestra.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

from flask import Blueprint, jsonify, request

from deployment_descriptors import parse_sla
from root_orchestrator.api.context import ctx
from root_orchestrator.apply import service_doc
from treeline_common.http import json_body

log = logging.getLogger(__name__)

bp = Blueprint("applications", __name__)


@bp.post("/api/application/")
def create_applications() -> Any:
    sla = parse_sla(json_body(request))
    stores = ctx().stores
    created = []
    for app in sla.applications:
        raw = {k: copy.deepcopy(v) for k, v in app.raw.items() if k != "microservices"}
        doc = stores.applications.create_application(raw, [service_doc(ms) for ms in app.microservices],
                                                     sla.customer_id)
        log.info("application %s (%s) created with %d services", doc["applicationID"], app.name,
                 len(doc["microservices"]))
        created.append(doc)
    return jsonify({"applications": created}), 201


@bp.get("/api/applications/")
def list_applications() -> Any:
    return jsonify({"applications": ctx().stores.applications.list_applications()})


@bp.get("/api/application/<application_id>")
def get_application(application_id: str) -> Any:
    return jsonify(ctx().stores.applications.get_application(application_id))


@bp.delete("/api/application/<application_id>")
def delete_application(application_id: str) -> Any:
    c = ctx()
    c.stores.applications.get_application(application_id)  # 404 before touching clusters
    failures = []
    for service in c.stores.applications.list_services(application_id):
        failures += c.instances.undeploy_all(service)
    services = c.stores.applications.delete_application(application_id)
    return jsonify({"deleted": application_id, "services": [s["service_id"] for s in services],
                    "undeploy_failures": failures})


@bp.get("/api/services/")
def list_services() -> Any:
    application_id = request.args.get("application_id")
    return jsonify({"services": ctx().stores.applications.list_services(application_id)})


@bp.get("/api/service/<service_id>")
def get_service(service_id: str) -> Any:
    return jsonify(ctx().stores.applications.get_service(service_id))


@bp.get("/api/service/<service_id>/events")
def service_events(service_id: str) -> Any:
    """Re-plans (cause, old and new predicted cost, duration), retries and failures, oldest first."""
    return jsonify({"service_id": service_id, "events": ctx().instances.events(service_id)})


@bp.delete("/api/service/<service_id>")
def delete_service(service_id: str) -> Any:
    c = ctx()
    failures = c.instances.undeploy_all(c.stores.applications.get_service(service_id))
    c.stores.applications.delete_service(service_id)
    return jsonify({"deleted": service_id, "undeploy_failures": failures})


@bp.post("/api/service/<service_id>/instance")
def create_instance(service_id: str) -> Any:
    return jsonify(ctx().instances.create_instance(service_id)), 202


@bp.delete("/api/service/<service_id>/instance/<int:instance>")
def delete_instance(service_id: str, instance: int) -> Any:
    return jsonify(ctx().instances.delete_instance(service_id, instance))
