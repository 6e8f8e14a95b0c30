"""The cluster's route table and the OpenAPI 3.1 document generated from it (``GET /api/openapi.json``).

As the root's (:mod:`root_orchestrator.openapi`): one table, and a unit test checks that the Flask
app serves exactly these (method, path) pairs. Who may call each route is not written here: the
views declare it with the check they run (:func:`cluster_orchestrator.api.create_app`, one
:class:`Credential` each) and the document's per-route ``security`` is generated from those
declarations, read off the live URL map.

The request body schemas come from what validates the bodies: :class:`~treeline_common.jobs.JobRequest`
through :func:`treeline_common.wire.json_schema`, its ``microservice`` the SLA v2.0 schema's
``microservice`` definition (what :func:`deployment_descriptors.validate_microservice` checks it with),
the node registration from the field tables of :func:`cluster_orchestrator.nodes.validate_registration`
and the re-measure request from the patterns of :func:`cluster_orchestrator.dryrun.parse_profile_request`.
"""

from __future__ import annotations

import copy
import enum
import json
from collections.abc import Mapping
from typing import Any

from cluster_orchestrator import __doc__ as _pkg_doc
from cluster_orchestrator import nodes
from cluster_orchestrator.dryrun import DEVICE_CLASS_RE, SHA256_RE
from deployment_descriptors import sla_schema
from treeline_common.jobs import JobRequest
from treeline_common.openapi import SCHEMAS, Route, error_response, openapi_path, operation
from treeline_common.wire import json_schema


class Credential(enum.Enum):
    """What a route's caller must show (``Authorization: Bearer <token>``)."""

    PUBLIC = "public"
    ROOT = "root"  # the root's cluster token (--root-token), when the cluster has one
    JOIN = "join"  # any join token, when the cluster has join tokens
    JOIN_ADMIN = "join-admin"  # the root's cluster token or the cluster's initial join token
    NODE = "node"  # any join token or the root's cluster token, when the cluster has join tokens

    @property
    def summary(self) -> str:
        return _SUMMARIES[self]

    @property
    def security(self) -> list[dict[str, list[str]]]:
        """The operation's OpenAPI ``security``: alternatives, any one of which suffices."""
        return [{scheme: []} for scheme in _SCHEMES[self]]


_SUMMARIES = {
    Credential.PUBLIC: "public",
    Credential.ROOT: "the root's cluster token (the cluster's --root-token), when the cluster has one",
    Credential.JOIN: "a join token, when the cluster has join tokens",
    Credential.JOIN_ADMIN: "the root's cluster token or the cluster's initial join token",
    Credential.NODE: "a join token (the node's own) or the root's cluster token, "
                     "when the cluster has join tokens",
}
ROOT_TOKEN, JOIN_TOKEN, INITIAL_JOIN_TOKEN = "rootToken", "joinToken", "initialJoinToken"
_SCHEMES: dict[Credential, tuple[str, ...]] = {
    Credential.PUBLIC: (), Credential.ROOT: (ROOT_TOKEN,), Credential.JOIN: (JOIN_TOKEN,),
    Credential.JOIN_ADMIN: (ROOT_TOKEN, INITIAL_JOIN_TOKEN), Credential.NODE: (JOIN_TOKEN, ROOT_TOKEN)}
SECURITY_SCHEMES = {
    ROOT_TOKEN: {"type": "http", "scheme": "bearer",
                 "description": "The token the root calls this cluster with: the cluster token this "
                                "cluster uses with the root (--root-token / TREELINE_ROOT_TOKEN)."},
    JOIN_TOKEN: {"type": "http", "scheme": "bearer",
                 "description": "A join token (tlj_<id>_<secret>): the initial one (made at the first "
                                "start or given with --join-token) or one made over POST /api/join-tokens."},
    INITIAL_JOIN_TOKEN: {"type": "http", "scheme": "bearer",
                         "description": "The cluster's initial join token (only it may manage join tokens)."},
}


_SIMPLE = {str: "string", int: "integer", float: "number", bool: "boolean", list: "array", dict: "object"}

ROUTES: tuple[Route, ...] = (
    Route("GET", "/status",
          "{cluster_name, cluster_id, registered, aggregate, deployments, broker_connected}"),
    Route("GET", "/api/health",
          "Liveness and identity: {status: ok, instance_id (made at process start), name, version}"),
    Route("GET", "/metrics", "Prometheus text exposition of this cluster (cluster_orchestrator.metrics)"),
    Route("GET", "/api/openapi.json", "This document"),
    Route("POST", "/api/node/register",
          "A node engine joins -> {node_id, cluster_id, mqtt_host, mqtt_port, telemetry_interval} (plus its "
          "MQTT credentials when the cluster owns the broker's identities); same name -> same node_id",
          "json", (200, 400, 401, 409), "NodeRegistration"),
    Route("POST", "/api/join-tokens",
          "{name?} -> {token_id, name, created_at, initial: false, token}: a join token, shown once",
          "json", (201, 400, 401, 404), "JoinTokenRequest", body_required=False),
    Route("GET", "/api/join-tokens", "{join_tokens: [{token_id, name, created_at, initial}]} (no secrets)",
          None, (200, 401, 404)),
    Route("DELETE", "/api/join-tokens/<token_id>", "Revoke a join token -> {revoked}", None, (200, 401, 404)),
    Route("GET", "/api/nodes", "{nodes: [{node_id, name, profile, online, last_seen, telemetry, ...}]}"),
    Route("POST", "/api/service/<service_id>/<instance>",
          "Root -> cluster: deploy one instance (stored as desired state) -> "
          "{service_id, instance, deployment_id, status}",
          "json", (202, 400, 401), "JobRequest"),
    Route("DELETE", "/api/service/<service_id>/<instance>", "Undeploy one instance -> {service_id, instance, "
          "status}", None, (200, 401, 404)),
    Route("GET", "/api/artifacts/<sha256>", "A model or partition this cluster holds (bytes)", None,
          (200, 401, 404)),
    Route("GET", "/api/deployments/<service_id>/<instance>",
          "{status, status_detail, placement, pending, generation, attempts, retry_at, events, ...}",
          None, (200, 404)),
    Route("POST", "/api/plan",
          "Dry run of a JobRequest: {schedulable, strategy, message, predicted, stages, relay_node_name, "
          "reasons, profiles, training (a training job: server, clients, rejected, unschedulable, field)}; "
          "nothing deployed", "json", (200, 400, 401, 503), "JobRequest"),
    Route("POST", "/api/models/profile",
          "{name, version, sha256, device_class|null}: re-measure op times in the background -> "
          "{name, version, device_classes, nodes}", "json", (202, 400, 401, 422), "ProfileRequest"),
    # The Open Inference Protocol (KServe v2 REST) for every deployment here (.inference_v2)
    Route("GET", "/v2/health/live", "{live: true}"),
    Route("GET", "/v2/health/ready", "{ready: true}"),
    Route("GET", "/v2", "Server metadata {name, version, extensions}"),
    Route("GET", "/v2/models/<name>", "Model metadata {name, versions, platform, inputs, outputs}; <name> is "
          "a service id, a deployment id or a microservice name", None, (200, 400, 404)),
    Route("GET", "/v2/models/<name>/ready", "200 while the deployment is RUNNING, else 503", None,
          (200, 404, 503)),
    Route("POST", "/v2/models/<name>/infer", "v2 inference request (JSON tensors, or JSON + binary tensors "
          "with Inference-Header-Content-Length) -> outputs; forwarded to the deployment's current entry",
          "bytes", (200, 400, 401, 404, 413, 503)),
)

def _types(types: tuple[type, ...]) -> dict[str, Any]:
    return {"type": "number" if float in types else _SIMPLE[types[0]]}


def registration_schema() -> dict[str, Any]:
    """The node registration body, from the field tables and ranges of ``validate_registration``
    (a null value counts as absent there, so optional fields may be null)."""
    properties: dict[str, Any] = {name: _types(types) for name, types in nodes._REQUIRED.items()}
    for name, types in nodes._OPTIONAL.items():
        properties[name] = {"anyOf": [_types(types), {"type": "null"}]}
    for name in nodes._DEVICE_FIGURES:
        properties[name] = {"anyOf": [{"type": "number", "minimum": 0}, {"type": "null"}]}
    properties["uplink_mbps"]["anyOf"][0] = {"type": "number", "exclusiveMinimum": 0}
    properties["name"]["pattern"] = r"\S"  # not blank
    properties["cpu_count"]["minimum"] = 1
    properties["memory_limit_mb"]["minimum"] = 0
    properties["speed_factor"]["exclusiveMinimum"] = 0
    for name in ("data_endpoint", "data_curve_endpoint"):  # empty, or a URL like tcp://host:port
        endpoint = {"type": "string", "pattern": "^$|://"}
        properties[name] = endpoint if name in nodes._REQUIRED else {"anyOf": [endpoint, {"type": "null"}]}
    properties["curve_public_key"]["anyOf"][0] = {"type": "string", "pattern": "^(.{40})?$"}
    properties["battery"] = {"anyOf": [{"type": "null"}, {
        "type": "object", "required": ["percent"],
        "properties": {"percent": {"type": "number"}, "charging": {"type": "boolean"}}}]}
    return {"type": "object", "description": "A node engine's registration (node_engine.registration)",
            "required": list(nodes._REQUIRED), "properties": properties}


def profile_request_schema() -> dict[str, Any]:
    """The re-measure body, as ``parse_profile_request`` checks it."""
    return {"type": "object", "required": ["name", "version", "sha256"], "properties": {
        "name": {"type": "string", "minLength": 1},
        "version": {"type": "integer", "minimum": 1},
        "sha256": {"type": "string", "pattern": SHA256_RE.pattern},
        "device_class": {"anyOf": [{"type": "string", "pattern": DEVICE_CLASS_RE.pattern},
                                   {"type": "null"}]}}}


def _sla_definitions() -> dict[str, Any]:
    """The SLA v2.0 schema's ``$defs`` as ``Sla.<name>`` components (refs rewritten to match)."""
    defs = copy.deepcopy(sla_schema()).get("$defs", {})
    text = json.dumps({f"Sla.{name}": body for name, body in defs.items()})
    found: dict[str, Any] = json.loads(text.replace('"#/$defs/', f'"{SCHEMAS}Sla.'))
    return found


def body_schemas() -> dict[str, Any]:
    """Every request body schema, by component name."""
    schemas = _sla_definitions()
    refs: dict[str, Any] = {}
    job = json_schema(JobRequest, refs, SCHEMAS)
    # typed as a dict on the dataclass; validated against the SLA's microservice definition
    job["properties"]["microservice"] = {"$ref": f"{SCHEMAS}Sla.microservice"}
    schemas.update(refs)
    schemas["JobRequest"] = job
    schemas["NodeRegistration"] = registration_schema()
    schemas["ProfileRequest"] = profile_request_schema()
    schemas["JoinTokenRequest"] = {"type": "object",
                                   "properties": {"name": {"type": "string", "maxLength": 128}}}
    return schemas


def openapi_document(server_url: str | None = None,
                     credentials: Mapping[tuple[str, str], Credential] | None = None) -> dict[str, Any]:
    """The document; ``credentials`` (``{(METHOD, rule): Credential}``, from the app) sets each
    operation's ``security`` (``[]`` for public routes) and ``x-treeline-access``."""
    paths: dict[str, dict[str, Any]] = {}
    for route in ROUTES:
        op = operation(route)
        credential = (credentials or {}).get((route.method, route.rule))
        if credential is not None:
            op["security"] = credential.security
            op["x-treeline-access"] = credential.summary
            if credential is not Credential.PUBLIC:
                op["responses"].setdefault("401", error_response("Missing or wrong token"))
        paths.setdefault(openapi_path(route.rule), {})[route.method.lower()] = op
    doc: dict[str, Any] = {"openapi": "3.1.0",
                           "info": {"title": "Treeline cluster orchestrator", "version": "0.1.0",
                                    "description": (_pkg_doc or "").strip()},
                           "paths": paths,
                           "components": {"securitySchemes": SECURITY_SCHEMES, "schemas": body_schemas()}}
    if server_url:
        doc["servers"] = [{"url": server_url}]
    return doc
