"""Health (with the process identity), the OpenAPI document and the browsable ``/api/docs`` page.

All three are public: no token. The OpenAPI document's per-route security comes from the access
rules the views declare (:func:`root_orchestrator.api.guard.access`), read off the live URL map.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, current_app, jsonify

from root_orchestrator.api.context import ctx
from root_orchestrator.api.guard import access, access_of
from root_orchestrator.auth.principals import PUBLIC, Access
from root_orchestrator.docs_page import DOCS_HTML
from root_orchestrator.identity import SERVICE_NAME
from root_orchestrator.openapi import openapi_document
from treeline_common.health import health_body

bp = Blueprint("system", __name__)


@bp.get("/api/health")
@access(PUBLIC)
def health() -> Any:
    """``{status, instance_id, name, version}``: ``instance_id`` tells this process from any other
    root (another stack's, or this one's before a restart) answering on the same address."""
    return jsonify(health_body(ctx().instance_id, SERVICE_NAME))


def served_access() -> dict[tuple[str, str], Access]:
    """``{(METHOD, rule): access}`` of every route the current app serves."""
    found: dict[tuple[str, str], Access] = {}
    for rule in current_app.url_map.iter_rules():
        rule_access = access_of(current_app.view_functions[rule.endpoint])
        if rule_access is not None:
            for method in (rule.methods or set()) - {"HEAD", "OPTIONS"}:
                found[(method, rule.rule)] = rule_access
    return found


@bp.get("/api/openapi.json")
@access(PUBLIC)
def openapi() -> Any:
    return jsonify(openapi_document(ctx().public_url, served_access()))


@bp.get("/api/docs")
@access(PUBLIC)
def docs() -> Any:
    """A small self-contained page listing the routes of ``/api/openapi.json`` (no CDN)."""
    response = Response(DOCS_HTML, mimetype="text/html")
    response.headers["Content-Security-Policy"] = ("default-src 'none'; script-src 'unsafe-inline'; "
                                                   "style-src 'unsafe-inline'; connect-src 'self'")
    return response
