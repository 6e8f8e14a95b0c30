"""Cluster registry and the clusters' information pushes."""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import urlparse

from flask import Blueprint, jsonify, request

from root_orchestrator.api.context import ctx
from root_orchestrator.ranking import is_active
from treeline_common.errors import InvalidInput
from treeline_common.http import json_body

log = logging.getLogger(__name__)

bp = Blueprint("clusters", __name__)


def _view(cluster: dict[str, Any], now: float, window_s: float) -> dict[str, Any]:
    return {**cluster, "active": is_active(cluster, now, window_s)}


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
def register() -> Any:
    name, location, url = _registration(json_body(request))
    c = ctx()
    doc, created = c.stores.clusters.register(name, location, url, c.clock.now())
    log.info("cluster %s %s as %s (%s)", name, "registered" if created else "re-registered",
             doc["cluster_id"], url)
    return jsonify({"cluster_id": doc["cluster_id"]}), (201 if created else 200)


@bp.get("/api/clusters/")
def list_clusters() -> Any:
    c = ctx()
    now = c.clock.now()
    return jsonify({"clusters": [_view(d, now, c.active_window_s) for d in c.stores.clusters.list()]})


@bp.get("/api/clusters/<cluster_id>")
def get_cluster(cluster_id: str) -> Any:
    c = ctx()
    return jsonify(_view(c.stores.clusters.get(cluster_id), c.clock.now(), c.active_window_s))


@bp.post("/api/information/<cluster_id>")
def information(cluster_id: str) -> Any:
    return jsonify(ctx().instances.apply_push(cluster_id, json_body(request)))
