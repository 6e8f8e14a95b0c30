"""Op-time profiles of model versions, per device class (docs/contracts.md, "Scheduler v2 additions").

Why at the root: a profile is measured once per (model version, device class) by one node of a
cluster and is valid for every cluster with that device class, so it lives next to the model
version it describes. The body is a ``ProfileResult`` as JSON; the device class in the path is
the key (it overrides the body's). A profile measured on other bytes than the version's is
refused (``sha256`` must match when given). Last write wins.

Profiles can be thrown away (``DELETE``) and re-measured on request (``POST .../profile``): a
cluster is asked to time the ops again on one node per device class and PUTs the results here.
"""

from __future__ import annotations

import logging
import math
import re
from typing import Any

from flask import Blueprint, jsonify, request

from root_orchestrator.api.context import ctx
from root_orchestrator.api.guard import access, visible_model
from root_orchestrator.auth.principals import OWNER, PROFILES
from treeline_common.errors import InvalidInput, TreelineError, Unavailable, Unschedulable
from treeline_common.http import json_body

log = logging.getLogger(__name__)

bp = Blueprint("profiles", __name__)

DEVICE_CLASS_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_STRING_FIELDS = ("node_id", "request_id", "sha256", "error")
_NUMBER_FIELDS = ("total_ms", "ts")


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def validate_profile(body: Any) -> list[dict[str, str]]:
    """``[{path, message}]`` for everything wrong with a ProfileResult body (empty = valid)."""
    if not isinstance(body, dict):
        return [{"path": "", "message": "expected a JSON object"}]
    errors: list[dict[str, str]] = []
    op_ms = body.get("op_ms", {})
    if not isinstance(op_ms, dict):
        errors.append({"path": "op_ms", "message": "expected an object {op name: ms}"})
    else:
        for name, value in op_ms.items():
            if not _number(value) or value < 0:
                errors.append({"path": f"op_ms.{name}", "message": "expected a non-negative number"})
    for key in _NUMBER_FIELDS:
        if key in body and (not _number(body[key]) or body[key] < 0):
            errors.append({"path": key, "message": "expected a non-negative number"})
    runs = body.get("runs", 0)
    if isinstance(runs, bool) or not isinstance(runs, int) or runs < 0:
        errors.append({"path": "runs", "message": "expected a non-negative integer"})
    for key in _STRING_FIELDS:
        if key in body and not isinstance(body[key], str):
            errors.append({"path": key, "message": "expected a string"})
    return errors


def _check_device_class(device_class: str) -> str:
    if not DEVICE_CLASS_RE.match(device_class):
        raise InvalidInput("invalid device class", [{"path": "device_class",
                                                     "message": f"must match {DEVICE_CLASS_RE.pattern}"}])
    return device_class


@bp.put("/api/models/<name>/versions/<ref>/profiles/<device_class>")
@access(PROFILES)
def put_profile(name: str, ref: str, device_class: str) -> Any:
    _check_device_class(device_class)
    c = ctx()
    version = visible_model(c.stores, name, ref)  # 404 for an unknown model or version
    body = json_body(request)
    errors = validate_profile(body)
    if not errors and body.get("sha256") and str(body["sha256"]).lower() != version["sha256"]:
        errors.append({"path": "sha256", "message": f"profile of {body['sha256']}, not of this version "
                                                    f"({version['sha256']})"})
    if errors:
        raise InvalidInput("invalid profile", errors)
    doc = {"node_id": "", "request_id": "", "sha256": version["sha256"], "op_ms": {}, "total_ms": 0.0,
           "runs": 0, "error": "", "ts": 0.0,
           **{k: v for k, v in body.items() if k in _STRING_FIELDS + _NUMBER_FIELDS + ("op_ms", "runs")},
           "device_class": device_class, "stored_at": c.clock.now()}
    doc["sha256"] = version["sha256"]
    stored = c.stores.models.put_profile(name, int(version["version"]), device_class, doc)
    log.info("stored %s profile of %s v%s (%d ops)", device_class, name, version["version"],
             len(doc["op_ms"]))
    return jsonify(stored)


@bp.get("/api/models/<name>/versions/<ref>/profiles/<device_class>")
@access(PROFILES)
def get_profile(name: str, ref: str, device_class: str) -> Any:
    c = ctx()
    version = visible_model(c.stores, name, ref)
    return jsonify(c.stores.models.get_profile(name, int(version["version"]), device_class))


@bp.get("/api/models/<name>/versions/<ref>/profiles")
@access(PROFILES)
def list_profiles(name: str, ref: str) -> Any:
    c = ctx()
    version = visible_model(c.stores, name, ref)
    return jsonify({"profiles": c.stores.models.list_profiles(name, int(version["version"]))})


def _profile_request(body: dict[str, Any]) -> str | None:
    """The ``device_class`` of a re-measure request (None = every class), or InvalidInput."""
    unknown = sorted(set(body) - {"device_class"})
    errors = [{"path": key, "message": "unknown field (expected only device_class)"} for key in unknown]
    device_class = body.get("device_class")
    if device_class is not None and (not isinstance(device_class, str)
                                     or not DEVICE_CLASS_RE.match(device_class)):
        errors.append({"path": "device_class",
                       "message": f"must be a string matching {DEVICE_CLASS_RE.pattern}"})
    if errors:
        raise InvalidInput("invalid profile request", errors)
    return device_class


@bp.post("/api/models/<name>/versions/<ref>/profile")
@access(OWNER)
def remeasure(name: str, ref: str) -> Any:
    """Throw away the version's stored profiles (every class, or ``device_class``) and ask an active
    cluster to measure them again; 202 ``{name, version, device_classes_cleared, cluster_id,
    cluster_name}``. The cluster measures in the background and PUTs the results here.

    Nothing is cleared when no cluster is active (422). When every active cluster refuses, the
    profiles stay cleared (the next deployment measures the missing classes itself) and the
    answer is 503, or 422 when each one said it has no node of the class.
    """
    c = ctx()
    version = visible_model(c.stores, name, ref)  # 404 (also for another user's model) first
    body = json_body(request) if request.get_data(cache=True) else {}
    device_class = _profile_request(body)
    ranked = c.instances.ranked_clusters()
    number = int(version["version"])
    cleared = c.stores.models.delete_profiles(name, number, device_class)
    ask = {"name": name, "version": number, "sha256": version["sha256"], "device_class": device_class}
    failures: list[TreelineError] = []
    details: list[dict[str, Any]] = []
    for cluster in ranked:
        try:
            c.cluster_client.profile(cluster["url"], ask)
        except TreelineError as exc:
            log.warning("cluster %s will not profile %s v%s: %s", cluster["cluster_name"], name, number,
                        exc)
            failures.append(exc)
            details.append({"path": f"clusters.{cluster['cluster_name']}",
                            "message": f"{exc.code}: {exc}"})
            continue
        log.info("cleared %s profile(s) of %s v%s; cluster %s re-measures %s", cleared, name, number,
                 cluster["cluster_name"], device_class or "every class")
        return jsonify({"name": name, "version": number, "device_classes_cleared": cleared,
                        "cluster_id": cluster["cluster_id"],
                        "cluster_name": cluster["cluster_name"]}), 202
    message = f"no cluster will profile {name} v{number}; cleared {cleared or 'nothing'}"
    if all(isinstance(f, Unschedulable) for f in failures):
        raise Unschedulable(message, details)
    raise Unavailable(message, details)


def _clear(name: str, ref: str, device_class: str | None) -> Any:
    c = ctx()
    version = visible_model(c.stores, name, ref)
    cleared = c.stores.models.delete_profiles(name, int(version["version"]), device_class)
    log.info("deleted profiles %s of %s v%s", cleared, name, version["version"])
    return jsonify({"name": name, "version": version["version"], "device_classes_cleared": cleared})


@bp.delete("/api/models/<name>/versions/<ref>/profiles")
@access(OWNER)
def delete_profiles(name: str, ref: str) -> Any:
    """Delete every stored profile of the version; ``device_classes_cleared`` lists them
    (idempotent)."""
    return _clear(name, ref, None)


@bp.delete("/api/models/<name>/versions/<ref>/profiles/<device_class>")
@access(OWNER)
def delete_profile(name: str, ref: str, device_class: str) -> Any:
    """Delete one class's profile; ``device_classes_cleared`` is ``[]`` when it had none
    (idempotent)."""
    return _clear(name, ref, _check_device_class(device_class))
