"""Oakestra's answer shapes, for the routes Oakestra's CLI and dashboard call.

Oakestra answers lists as bare JSON arrays (its CLI also accepts them as a JSON string) and
gives documents ``_id: {"$oid": id}`` besides their own id fields. The Treeline routes answer
the same documents; :func:`listing` keeps the pre-security envelope (``{"clusters": [...]}``)
only for the anonymous development-mode caller (:data:`LEGACY_CLUSTER`), i.e. for processes
started before they were given a token, so they keep working unchanged.
"""

from __future__ import annotations

from typing import Any

from flask import Response, g, jsonify

from root_orchestrator.auth.principals import Principal


def listing(key: str, items: list[dict[str, Any]]) -> Response:
    found = g.get("principal")
    if isinstance(found, Principal) and found.legacy:
        return jsonify({key: items})
    return jsonify(items)


def with_oid(doc: dict[str, Any], id_field: str) -> dict[str, Any]:
    return {"_id": {"$oid": str(doc.get(id_field))}, **doc}


def application_view(doc: dict[str, Any]) -> dict[str, Any]:
    return with_oid(doc, "applicationID")


def service_view(doc: dict[str, Any]) -> dict[str, Any]:
    return {**with_oid(doc, "service_id"), "microserviceID": doc.get("service_id")}


def cluster_view(doc: dict[str, Any]) -> dict[str, Any]:
    return with_oid(doc, "cluster_id")
