"""Health (with the process identity) and the OpenAPI document."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify

from root_orchestrator.api.context import ctx
from root_orchestrator.identity import SERVICE_NAME, package_version
from root_orchestrator.openapi import openapi_document

bp = Blueprint("system", __name__)


@bp.get("/api/health")
def health() -> Any:
    """``{status, instance_id, name, version}``: ``instance_id`` tells this process from any other
    root (another stack's, or this one's before a restart) answering on the same address."""
    return jsonify({"status": "ok", "instance_id": ctx().instance_id, "name": SERVICE_NAME,
                    "version": package_version()})


@bp.get("/api/openapi.json")
def openapi() -> Any:
    return jsonify(openapi_document(ctx().public_url))
