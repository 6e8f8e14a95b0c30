"""Declarative SLA endpoints for the operator CLI: ``POST /api/apply`` and ``POST /api/plan``.

Both take an SLA v2.0 body validated exactly as ``POST /api/application/`` validates it
(``deployment_descriptors.parse_sla``: 400 with a ``{path, message}`` per problem). ``apply``
makes the stored state match the file, idempotently (:mod:`root_orchestrator.apply`); ``plan``
asks the clusters what they would do with it, changing nothing (:mod:`root_orchestrator.dryrun`).
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify, request

from deployment_descriptors import parse_sla
from root_orchestrator.api.context import ctx
from treeline_common.http import json_body

bp = Blueprint("declarative", __name__)


@bp.post("/api/apply")
def apply() -> Any:
    """200 ``{applications: [{applicationID, application_name, action, changes, microservices,
    redeployed, failures}]}``; ``action`` is created, updated or unchanged."""
    return jsonify({"applications": ctx().applier.apply(parse_sla(json_body(request)))})


@bp.post("/api/plan")
def plan() -> Any:
    """200 ``{services: [{microservice_name, cluster_id, cluster_name, schedulable, strategy,
    predicted, stages, reasons, ...}]}``; nothing is deployed."""
    return jsonify({"services": ctx().dryrun.plan(parse_sla(json_body(request)))})
