"""``POST /api/training/<service_id>/<instance>/result``: a cluster hands the root a trained model.

``GET /api/training/<service_id>/<instance>/aggregator`` (internal): a hierarchical job's root
aggregator address, which its cluster parts poll (:mod:`root_orchestrator.training_hierarchy`).

The cluster first stores the ONNX bytes with ``PUT /api/artifacts/<sha256>`` (digest checked),
then posts ``{name, sha256, lineage, bytes_per_client_round}`` here (cluster token, or an admin /
infrastructure provider). The root registers a new version of ``name`` owned by the service's
application owner, with the lineage and metrics of
:func:`root_orchestrator.training.register_result` (the lineage's parent must exist). 400 names
each bad field; 404 for an unknown service, instance or artifact. A repeat (same digest, same
service instance) answers the version it made (200), so the cluster may retry a post whose
answer it lost.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Blueprint, jsonify, request

from root_orchestrator.api.context import ctx
from root_orchestrator.api.guard import access
from root_orchestrator.auth.principals import INTERNAL
from root_orchestrator.instance_docs import find_instance
from root_orchestrator.stores.base import check_model_name, check_sha256
from root_orchestrator.training import register_result, training_metrics
from root_orchestrator.training_hierarchy import aggregator_address
from treeline_common.errors import InvalidInput, NotFound
from treeline_common.training import TRAINING_VIRTUALIZATION

log = logging.getLogger(__name__)

bp = Blueprint("training", __name__)


@bp.post("/api/training/<service_id>/<int:instance>/result")
@access(INTERNAL)
def post_result(service_id: str, instance: int) -> Any:
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise InvalidInput("the body must be a JSON object", [{"path": "body", "message": "not an object"}])
    stores = ctx().stores
    service = stores.applications.get_service(service_id)
    if service.get("virtualization") != TRAINING_VIRTUALIZATION:
        raise InvalidInput(f"service {service_id} is not an ml-training service",
                           [{"path": "service_id", "message": f"is {service.get('virtualization')!r}"}])
    if find_instance(list(service.get("instances") or []), instance) is None:
        raise NotFound(f"service {service_id} has no instance {instance}",
                       [{"path": "instance", "message": "unknown instance"}])
    name = body.get("name")
    lineage = body.get("lineage")
    sent = body.get("bytes_per_client_round") or {}
    if not isinstance(name, str):
        raise InvalidInput("name must be a model name", [{"path": "name", "message": "must be a string"}])
    check_model_name(name)
    sha256 = check_sha256(str(body.get("sha256") or ""))
    if not isinstance(lineage, dict) or not isinstance(lineage.get("parent"), dict):
        raise InvalidInput("lineage must be an object with a parent",
                           [{"path": "lineage", "message": "must be an object with parent {name, version}"}])
    if not isinstance(sent, dict) or not all(isinstance(v, list) and all(isinstance(b, int) for b in v)
                                             for v in sent.values()):
        raise InvalidInput("bytes_per_client_round must map node ids to lists of integers",
                           [{"path": "bytes_per_client_round", "message": "must be {node_id: [int]}"}])
    description = f"federated training of service {service_id}/{instance}"
    for known in _versions(name):  # a repeated post (the cluster retries): the version it made
        if known.get("sha256") == sha256 and known.get("description") == description:
            return jsonify(known), 200
    onnx = stores.artifacts.get(sha256)
    try:
        app = stores.applications.get_application(str(service["application_id"]))
        owner = str(app.get("userId") or "") or None
    except NotFound:
        owner = None
    doc = register_result(stores, name, onnx, lineage, training_metrics(lineage, sent),
                          description=description,
                          owner=owner, now=ctx().clock.now())
    log.info("service %s/%s: training result registered as %s:%s", service_id, instance, name, doc["version"])
    return jsonify(doc), 201


@bp.get("/api/training/<service_id>/<int:instance>/aggregator")
@access(INTERNAL)
def get_aggregator(service_id: str, instance: int) -> Any:
    """A hierarchical job's root aggregator address ``{address}`` for the cluster parts (cluster
    token); 404 while the root instance has not reported ``training_server_started``."""
    service = ctx().stores.applications.get_service(service_id)
    return jsonify({"address": aggregator_address(service, instance)}), 200


def _versions(name: str) -> list[dict[str, Any]]:
    try:
        return ctx().stores.models.list_versions(name)
    except NotFound:
        return []
