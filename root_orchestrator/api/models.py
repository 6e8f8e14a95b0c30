"""Model registry and content-addressed artifacts.

Uploads are raw bytes (``application/octet-stream``), or an archive of a model with its external
data files (:mod:`root_orchestrator.model_intake`): the ONNX model is parsed to validate it
and extract its signature, stored once by sha256, then a new version row points at it.
Downloads stream from the artifact store in chunks, never loading a whole model in memory.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from flask import Blueprint, Response, jsonify, request

from root_orchestrator.api.context import ctx
from root_orchestrator.api.guard import access, claims_model_name, model_owner, principal, visible_model
from root_orchestrator.api.model_lifecycle import referenced_artifacts, services_using, shown
from root_orchestrator.auth.principals import INTERNAL, OWNER
from root_orchestrator.model_intake import PROTOBUF_LIMIT, complete_signature, is_archive, unpack_archive
from root_orchestrator.onnx_signature import extract_signature
from root_orchestrator.rollouts import roll_alias
from root_orchestrator.stores.base import check_alias, check_model_name, check_sha256
from root_orchestrator.uploads import check_bytes_type, load_onnx_header, spool_body
from treeline_common.errors import Conflict

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
@access(OWNER)
@claims_model_name
def create_version(name: str) -> Any:
    check_model_name(name)
    alias = request.args.get("alias")
    if alias is not None:
        check_alias(alias)
    description = request.args.get("description", "")
    c = ctx()
    # streamed to disk while hashing (never the whole body in memory); 413 past the model limit
    check_bytes_type(request)
    staging = c.stores.artifacts.staging_dir
    upload = spool_body(request, staging)
    unpacked: Path | None = None
    try:
        path, sha256 = upload.path, upload.sha256
        if is_archive(upload.path, request.mimetype or ""):  # a model with external data (model_intake)
            unpacked, sha256, _ = unpack_archive(upload.path, staging or upload.path.parent,
                                                 request.max_content_length or PROTOBUF_LIMIT)
            path = unpacked
        signature = complete_signature(path, extract_signature(load_onnx_header(path)))
        stored = c.stores.artifacts.put_file(path, sha256)
    finally:
        upload.discard()
        if unpacked is not None:
            unpacked.unlink(missing_ok=True)
    doc = c.stores.models.create_version(name, stored.sha256, stored.size, signature, description,
                                         fmt="onnx", created_at=c.clock.now(), owner=model_owner(name))
    if alias is not None:
        doc = c.stores.models.set_alias(name, alias, doc["version"])
        doc = {**doc, "rollouts": roll_alias(c.instances, name, alias)}  # as a moved alias does
    log.info("registered model %s version %s (%s, %d bytes)", name, doc["version"], stored.sha256,
             stored.size)
    return jsonify(doc), 201


@bp.get("/api/models/")
@access(OWNER)
def list_models() -> Any:
    """The caller's models (every model for admins)."""
    who = principal()
    return jsonify({"models": [m for m in ctx().stores.models.list_models() if who.owns(m.get("owner"))]})


@bp.delete("/api/models/<name>")
@access(OWNER)
def delete_model(name: str) -> Any:
    """Delete the model, its versions, aliases and profiles; 409 naming every service whose SLA uses
    it (delete or re-apply those first). Artifacts no remaining version points at are deleted too;
    partitions cut from it stay until the artifact store is collected."""
    check_model_name(name)
    c = ctx()
    visible_model(c.stores, name)  # 404 (also for another user's model) before anything else
    users = services_using(name)
    if users:
        raise Conflict(f"model {name!r} is used by {len(users)} service(s)", users)
    deleted = c.stores.models.delete_model(name)
    dropped = sorted({v["sha256"] for v in deleted} - referenced_artifacts())
    for sha256 in dropped:
        c.stores.artifacts.delete(sha256)
    log.info("deleted model %s (%d versions, %d artifacts)", name, len(deleted), len(dropped))
    return jsonify({"deleted": name, "versions": [v["version"] for v in deleted],
                    "artifacts_deleted": dropped})


@bp.get("/api/models/<name>/versions")
@access(OWNER)
def list_versions(name: str) -> Any:
    visible_model(ctx().stores, name)
    return jsonify({"versions": [shown(v) for v in ctx().stores.models.list_versions(name)]})


@bp.get("/api/models/<name>/versions/<ref>")
@access(OWNER)
def get_version(name: str, ref: str) -> Any:
    """The version doc with the ``partitions`` clusters recorded for it."""
    doc = visible_model(ctx().stores, name, ref)
    partitions = ctx().stores.models.list_partitions(name, int(doc["version"]))
    return jsonify({**shown(doc), "partitions": partitions})


@bp.get("/api/models/<name>/versions/<ref>/artifact")
@access(OWNER)
def get_version_artifact(name: str, ref: str) -> Any:
    doc = visible_model(ctx().stores, name, ref)
    return _stream(doc["sha256"], f"{name}-v{doc['version']}.onnx")


@bp.get("/api/artifacts/<sha256>")
@access(INTERNAL)
def get_artifact(sha256: str) -> Any:
    return _stream(check_sha256(sha256))


@bp.put("/api/artifacts/<sha256>")
@access(INTERNAL)
def put_artifact(sha256: str) -> Any:
    check_sha256(sha256)
    check_bytes_type(request)
    upload = spool_body(request, ctx().stores.artifacts.staging_dir)  # 413 past the model limit
    try:
        result = ctx().stores.artifacts.put_file(upload.path, expected_sha256=sha256)
    finally:
        upload.discard()
    return jsonify({"sha256": result.sha256, "size": result.size}), (201 if result.created else 200)
