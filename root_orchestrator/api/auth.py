"""Oakestra's login and refresh: ``POST /api/auth/login`` and ``POST /api/auth/refresh``.

Login takes ``{username, password}`` (Oakestra's ``organization`` is accepted and ignored) and
answers ``{token, refresh_token}``. Refresh takes the refresh token as the bearer token (as
Oakestra's flask-jwt-extended clients send it) or as ``{"refresh_token": ...}`` and answers
``{token}``. Wrong credentials are 401 with the error body.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify, request

from root_orchestrator.api.guard import access, auth_service
from root_orchestrator.auth.errors import unauthorized
from root_orchestrator.auth.principals import PUBLIC
from treeline_common.http import json_body

bp = Blueprint("auth", __name__)


@bp.post("/api/auth/login")
@access(PUBLIC)
def login() -> Any:
    body = json_body(request)
    return jsonify(auth_service().login(body.get("username"), body.get("password")))


@bp.post("/api/auth/refresh")
@access(PUBLIC)
def refresh() -> Any:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        body = request.get_json(silent=True)
        token = body.get("refresh_token", "") if isinstance(body, dict) else ""
    if not isinstance(token, str) or not token.strip():
        raise unauthorized("missing refresh token (Authorization: Bearer <refresh_token>)")
    return jsonify(auth_service().refresh(token.strip()))
