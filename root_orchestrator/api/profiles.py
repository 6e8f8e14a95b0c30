"""Op-time profiles of model versions, per device class (docs/contracts.md, "Scheduler v2 additions").

Why at the root: a profile is measured once per (model version, device class) by one node of a
cluster and is valid for every cluster with that device class, so it lives next to the model
version it describes. The body is a ``ProfileResult`` as JSON; the device class in the path is
the key (it overrides the body's). A profile measured on other bytes than the version's is
refused (``sha256`` must match when given). Last write wins.
"""

from __future__ import annotations

import logging
import math
import re
from typing import Any

from flask import Blueprint, jsonify, request

from root_orchestrator.api.context import ctx
from treeline_common.errors import InvalidInput
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
def put_profile(name: str, ref: str, device_class: str) -> Any:
    _check_device_class(device_class)
    c = ctx()
    version = c.stores.models.get_version(name, ref)  # 404 for an unknown model or version
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
def get_profile(name: str, ref: str, device_class: str) -> Any:
    c = ctx()
    version = c.stores.models.get_version(name, ref)
    return jsonify(c.stores.models.get_profile(name, int(version["version"]), device_class))


@bp.get("/api/models/<name>/versions/<ref>/profiles")
def list_profiles(name: str, ref: str) -> Any:
    c = ctx()
    version = c.stores.models.get_version(name, ref)
    return jsonify({"profiles": c.stores.models.list_profiles(name, int(version["version"]))})
