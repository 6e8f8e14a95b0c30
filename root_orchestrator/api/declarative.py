"""Declarative SLA endpoints for the operator CLI: ``POST /api/apply`` and ``POST /api/plan``.

Both take an SLA v2.0 body validated exactly as ``POST /api/application/`` validates it
(``deployment_descriptors.parse_sla``: 400 with a ``{path, message}`` per problem). ``apply``
makes the stored state match the file, idempotently (:mod:`root_orchestrator.apply`); ``plan``
asks the clusters what they would do with it, changing nothing (:mod:`root_orchestrator.dryrun`).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from flask import Blueprint, jsonify, request

from deployment_descriptors import Sla, parse_sla
from deployment_descriptors.unknown_fields import unknown_fields
from deployment_descriptors.validation import sla_schema
from root_orchestrator.api.context import ctx
from root_orchestrator.api.guard import access, principal
from root_orchestrator.auth.principals import OWNER
from root_orchestrator.training_sla import check_training_models
from treeline_common.http import json_body

bp = Blueprint("declarative", __name__)


def _callers_sla() -> Sla:
    """The body's SLA, owned by the caller: its ``customerID`` is replaced by the caller's user id,
    so applications are keyed by ``(caller, application_name)`` and models resolve as the caller's.
    A training service whose starting model does not resolve is refused here, before any write
    (404 naming ``applications[i].microservices[j].training.model``;
    :mod:`~root_orchestrator.training_sla`)."""
    sla = replace(parse_sla(json_body(request)), customer_id=principal().id)
    check_training_models(sla, ctx().instances.resolve_model)
    return sla


@bp.post("/api/apply")
@access(OWNER)
def apply() -> Any:
    """200 ``{applications: [{applicationID, application_name, action, changes, microservices,
    redeployed, failures}], warnings: [{path, message}]}``; ``action`` is created, updated or
    unchanged; ``warnings`` name fields the schema does not know (ignored: a typo?)."""
    applied = ctx().applier.apply(_callers_sla())
    return jsonify({"applications": applied, "warnings": unknown_fields(json_body(request), sla_schema())})


@bp.post("/api/plan")
@access(OWNER)
def plan() -> Any:
    """200 ``{services: [{microservice_name, cluster_id, cluster_name, schedulable, strategy,
    predicted, stages, reasons, ...}]}``; nothing is deployed. Declared model inputs are checked
    against the registered signatures first, as apply does (400 at the field, not a cluster's 503)."""
    sla = _callers_sla()
    ctx().applier.check_inputs(sla)
    warnings = unknown_fields(json_body(request), sla_schema())
    return jsonify({"services": ctx().dryrun.plan(sla), "warnings": warnings})
