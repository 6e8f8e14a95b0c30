"""Cluster registry, the clusters' information pushes, and cluster tokens.

Clusters call the root with a *cluster token* (``Authorization: Bearer <token>``): one made with
``POST /api/clusters/tokens`` by an admin or infrastructure provider (shown once), or one the
root was started with (``--cluster-token`` / ``TREELINE_CLUSTER_TOKEN``). Listing clusters needs
any token; the lists answer Oakestra's array shape.
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import urlparse

from flask import Blueprint, jsonify, request

from root_orchestrator.api.context import ctx
from root_orchestrator.api.guard import access, auth_service, principal
from root_orchestrator.api.oakestra import cluster_view, listing
from root_orchestrator.auth.principals import CLUSTER_READ, INFRASTRUCTURE, INTERNAL
from root_orchestrator.auth.service import public_token
from root_orchestrator.ranking import is_active
from root_orchestrator.stores.base import not_found
from treeline_common.errors import InvalidInput
from treeline_common.http import json_body

log = logging.getLogger(__name__)

bp = Blueprint("clusters", __name__)


def _view(cluster: dict[str, Any], now: float, window_s: float) -> dict[str, Any]:
    return cluster_view({**cluster, "active": is_active(cluster, now, window_s)})


def _registration(body: dict[str, Any]) -> tuple[str, str, str]:
    """(name, location, url without a trailing slash) of a registration body, or InvalidInput
    listing every field that is wrong."""
    name, location, url = body.get("cluster_name"), body.get("cluster_location", ""), body.get("url")
    problems = []
    if not isinstance(name, str) or not name.strip():
        problems.append({"path": "cluster_name", "message": "must be a non-empty string"})
    if not isinstance(location, str):
        problems.append({"path": "cluster_location", "message": "must be a string"})
    if not isinstance(url, str) or urlparse(url).scheme not in ("http", "https") or not urlparse(url).netloc:
        problems.append({"path": "url", "message": "must be an http(s) URL"})
    if problems or not (isinstance(name, str) and isinstance(location, str) and isinstance(url, str)):
        raise InvalidInput("invalid cluster registration", problems)
    return name, location, url.rstrip("/")


@bp.post("/api/clusters/register")
@access(INTERNAL)
def register() -> Any:
    name, location, url = _registration(json_body(request))
    c = ctx()
    doc, created = c.stores.clusters.register(name, location, url, c.clock.now())
    log.info("cluster %s %s as %s (%s)", name, "registered" if created else "re-registered",
             doc["cluster_id"], url)
    return jsonify({"cluster_id": doc["cluster_id"]}), (201 if created else 200)


def _clusters(active_only: bool) -> list[dict[str, Any]]:
    c = ctx()
    now = c.clock.now()
    views = [_view(d, now, c.active_window_s) for d in c.stores.clusters.list()]
    return [v for v in views if v["active"]] if active_only else views


@bp.get("/api/clusters/")
@access(CLUSTER_READ)
def list_clusters() -> Any:
    return listing("clusters", _clusters(active_only=False))


@bp.get("/api/clusters/active")
@access(CLUSTER_READ)
def list_active_clusters() -> Any:
    return listing("clusters", _clusters(active_only=True))


@bp.get("/api/clusters/<cluster_id>")
@access(CLUSTER_READ)
def get_cluster(cluster_id: str) -> Any:
    c = ctx()
    return jsonify(_view(c.stores.clusters.get(cluster_id), c.clock.now(), c.active_window_s))


@bp.post("/api/information/<cluster_id>")
@access(INTERNAL)
def information(cluster_id: str) -> Any:
    return jsonify(ctx().instances.apply_push(cluster_id, json_body(request)))


@bp.post("/api/clusters/tokens")
@access(INFRASTRUCTURE)
def create_token() -> Any:
    """201 ``{token_id, owner, name, created_at, token}``: ``token`` is shown this once only."""
    body = json_body(request) if request.get_data(cache=True) else {}
    name = body.get("name", "")
    if not isinstance(name, str) or len(name) > 128:
        raise InvalidInput("invalid token name",
                           [{"path": "name", "message": "a string of at most 128 characters"}])
    doc, token = auth_service().create_cluster_token(principal(), name)
    return jsonify({**doc, "token": token}), 201


@bp.get("/api/clusters/tokens")
@access(INFRASTRUCTURE)
def list_tokens() -> Any:
    """The caller's cluster tokens (every one for admins), without secrets."""
    who = principal()
    return jsonify([public_token(t) for t in ctx().stores.users.list_cluster_tokens()
                    if who.is_admin or t.get("owner") == who.id])


@bp.delete("/api/clusters/tokens/<token_id>")
@access(INFRASTRUCTURE)
def revoke_token(token_id: str) -> Any:
    """Revoke a token at once (its clusters get 401 on their next call); 404 for others' tokens."""
    users, who = ctx().stores.users, principal()
    doc = users.get_cluster_token(token_id)
    if not (who.is_admin or doc.get("owner") == who.id):
        raise not_found("cluster token", token_id, "token_id")
    users.delete_cluster_token(token_id)
    log.info("cluster token %s revoked by %s", token_id, who.name)
    return jsonify({"revoked": public_token(doc)})
