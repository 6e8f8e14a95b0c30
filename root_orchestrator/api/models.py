"""Model registry and content-addressed artifacts.

Uploads are raw bytes (``application/octet-stream``): the ONNX model is parsed to validate it
and extract its signature, stored once by sha256, then a new version row points at it.
Downloads stream from the artifact store in chunks, never loading a whole model in memory.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Blueprint, Response, jsonify, request

from root_orchestrator.api.context import ctx
from root_orchestrator.onnx_signature import extract_signature, load_onnx
from root_orchestrator.stores.base import check_alias, check_model_name, check_sha256
from treeline_common.errors import InvalidInput
from treeline_common.http import json_body

log = logging.getLogger(__name__)

bp = Blueprint("models", __name__)


def _stream(sha256: str, filename: str | None = None) -> Response:
    artifacts = ctx().stores.artifacts
    size = artifacts.size(sha256)
    chunks = artifacts.iter_bytes(sha256)  # raises NotFound before the response starts
    response = Response(chunks, mimetype="application/octet-stream", direct_passthrough=True)
    response.headers["Content-Length"] = str(size)
    response.headers["ETag"] = f'"{sha256}"'
    response.headers["X-Content-SHA256"] = sha256
    if filename:
        response.headers["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response


@bp.post("/api/models/<name>/versions")
def create_version(name: str) -> Any:
    check_model_name(name)
    alias = request.args.get("alias")
    if alias is not None:
        check_alias(alias)
    description = request.args.get("description", "")
    data = request.get_data(cache=False)
    model = load_onnx(data)
    signature = extract_signature(model)
    c = ctx()
    stored = c.stores.artifacts.put(data)
    doc = c.stores.models.create_version(name, stored.sha256, stored.size, signature, description,
                                         fmt="onnx", created_at=c.clock.now())
    if alias is not None:
        doc = c.stores.models.set_alias(name, alias, doc["version"])
    log.info("registered model %s version %s (%s, %d bytes)", name, doc["version"], stored.sha256,
             stored.size)
    return jsonify(doc), 201


@bp.get("/api/models/")
def list_models() -> Any:
    return jsonify({"models": ctx().stores.models.list_models()})


@bp.get("/api/models/<name>/versions")
def list_versions(name: str) -> Any:
    return jsonify({"versions": ctx().stores.models.list_versions(name)})


@bp.get("/api/models/<name>/versions/<ref>")
def get_version(name: str, ref: str) -> Any:
    return jsonify(ctx().stores.models.get_version(name, ref))


@bp.get("/api/models/<name>/versions/<ref>/artifact")
def get_version_artifact(name: str, ref: str) -> Any:
    doc = ctx().stores.models.get_version(name, ref)
    return _stream(doc["sha256"], f"{name}-v{doc['version']}.onnx")


@bp.put("/api/models/<name>/aliases/<alias>")
def set_alias(name: str, alias: str) -> Any:
    version = json_body(request).get("version")
    if isinstance(version, bool) or not isinstance(version, int):
        raise InvalidInput("version must be an integer", [{"path": "version", "message": "not an integer"}])
    return jsonify(ctx().stores.models.set_alias(name, alias, version))


@bp.get("/api/artifacts/<sha256>")
def get_artifact(sha256: str) -> Any:
    return _stream(check_sha256(sha256))


@bp.put("/api/artifacts/<sha256>")
def put_artifact(sha256: str) -> Any:
    check_sha256(sha256)
    result = ctx().stores.artifacts.put(request.stream, expected_sha256=sha256)
    return jsonify({"sha256": result.sha256, "size": result.size}), (201 if result.created else 200)
