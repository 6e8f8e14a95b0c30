"""Health and the OpenAPI document."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify

from root_orchestrator.api.context import ctx
from root_orchestrator.openapi import openapi_document

bp = Blueprint("system", __name__)


@bp.get("/api/health")
def health() -> Any:
    return jsonify({"status": "ok"})


@bp.get("/api/openapi.json")
def openapi() -> Any:
    return jsonify(openapi_document(ctx().public_url))
