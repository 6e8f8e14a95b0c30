"""What the root's and the cluster's OpenAPI documents share: the route record and one operation.

Each orchestrator keeps its own route table (a unit test checks it against its Flask URL map) and
its own security schemes; this module turns one :class:`Route` into the operation object both
documents carry: path parameters, responses (errors with the one error body of
:mod:`treeline_common.errors`) and the request body (a ``components/schemas`` reference for JSON
bodies with a published schema, raw bytes for uploads). Pure: no Flask.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

SCHEMAS = "#/components/schemas/"

_PARAM = re.compile(r"<(?:(\w+):)?(\w+)>")

ERROR_SCHEMA: dict[str, Any] = {"type": "object", "properties": {"error": {"type": "object", "properties": {
    "code": {"type": "string"}, "message": {"type": "string"},
    "details": {"type": "array", "items": {"type": "object"}}}}}}


@dataclass(frozen=True)
class Route:
    """One served (method, Flask rule) with its summary, body kind and documented statuses."""

    method: str
    rule: str  # Flask rule, e.g. /api/service/<service_id>
    summary: str
    request: str | None = None  # "json" | "bytes" | None
    responses: tuple[int, ...] = (200,)
    body: str | None = None  # a components/schemas name for the JSON body (the schema that validates it)
    body_required: bool = True


def openapi_path(rule: str) -> str:
    """A Flask rule as an OpenAPI path: ``/api/x/<int:n>`` -> ``/api/x/{n}``."""
    return _PARAM.sub(lambda m: "{" + m.group(2) + "}", rule)


def error_response(description: str) -> dict[str, Any]:
    """A documented error status: the one error body."""
    return {"description": description, "content": {"application/json": {"schema": ERROR_SCHEMA}}}


def operation(route: Route) -> dict[str, Any]:
    """The operation object of ``route`` without its security (each document adds its own)."""
    params = [{"name": name, "in": "path", "required": True,
               "schema": {"type": "integer" if conv == "int" else "string"}}
              for conv, name in _PARAM.findall(route.rule)]
    op: dict[str, Any] = {"summary": route.summary, "parameters": params, "responses": {}}
    for status in route.responses:
        op["responses"][str(status)] = {"description": "OK"} if status < 400 else error_response("Error")
    if route.request == "json":
        schema = {"$ref": f"{SCHEMAS}{route.body}"} if route.body else {"type": "object"}
        op["requestBody"] = {"required": route.body_required,
                             "content": {"application/json": {"schema": schema}}}
    elif route.request == "bytes":
        op["requestBody"] = {"required": True, "content": {"application/octet-stream": {
            "schema": {"type": "string", "format": "binary"}}}}
    return op
