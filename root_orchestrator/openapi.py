"""The root's route table and the OpenAPI 3 document generated from it.

One table, one source of truth: a unit test checks that the Flask app serves exactly these
(method, path) pairs, so the document cannot drift from the code. Who may call each route is not
written here: the views declare it (``root_orchestrator.api.guard.access``) and the document's
per-route ``security`` is generated from those declarations.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from typing import Any

from deployment_descriptors import sla_schema
from root_orchestrator import __doc__ as _pkg_doc
from root_orchestrator.auth.principals import Access
from treeline_common.jobs import ClusterPush
from treeline_common.openapi import Route, error_response, openapi_path, operation
from treeline_common.wire import json_schema

ROUTES: tuple[Route, ...] = (
    Route("GET", "/api/health",
          "Liveness and identity: {status: ok, instance_id (made at process start), name: root, version}"),
    Route("GET", "/api/openapi.json", "This document"),
    Route("GET", "/api/docs", "A browsable HTML page listing the routes of this document"),
    Route("GET", "/metrics", "Prometheus text exposition of this root (root_orchestrator.metrics)",
          None, (200, 401, 403)),
    Route("POST", "/api/auth/login", "{username, password} -> {token, refresh_token} (Oakestra's login)",
          "json", (200, 400, 401)),
    Route("POST", "/api/auth/refresh",
          "Bearer <refresh_token> (or {refresh_token}) -> {token}: a new access token", "json", (200, 401)),
    Route("GET", "/api/users/", "[user] (admin)", None, (200, 401, 403)),
    Route("POST", "/api/users/",
          "{username, password, roles: [admin|application_provider|infrastructure_provider]} -> user",
          "json", (201, 400, 401, 403, 409)),
    Route("GET", "/api/users/<user>", "One user, by id or username", None, (200, 401, 403, 404)),
    Route("PUT", "/api/users/<user>", "{password?, roles?} -> user", "json", (200, 400, 401, 403, 404, 409)),
    Route("DELETE", "/api/users/<user>", "Delete a user (not oneself) -> {deleted}", None,
          (200, 401, 403, 404, 409)),
    Route("POST", "/api/models/<name>/versions",
          "Register a new version from raw ONNX bytes (query: description, alias) -> version doc",
          "bytes", (201, 400)),
    Route("GET", "/api/models/", "{models: [{name, latest_version, aliases}]}"),
    Route("DELETE", "/api/models/<name>",
          "Delete the model with its versions, aliases, profiles and unshared artifacts -> "
          "{deleted, versions, artifacts_deleted}; 409 naming the services that use it",
          None, (200, 400, 404, 409)),
    Route("GET", "/api/models/<name>/versions", "{versions: [version doc]}", None, (200, 404)),
    Route("GET", "/api/models/<name>/versions/<ref>", "Version doc; ref = int, latest or an alias", None,
          (200, 404)),
    Route("GET", "/api/models/<name>/versions/<ref>/artifact", "The version's ONNX bytes", None, (200, 404)),
    Route("PATCH", "/api/models/<name>/versions/<ref>",
          "{description?, tags?, lineage? (set once), metrics?} (treeline_common.registry.VersionUpdate) "
          "-> version doc; 400 naming each bad field, 409 when the lineage is already set",
          "json", (200, 400, 404, 409)),
    Route("DELETE", "/api/models/<name>/versions/<ref>",
          "Delete one version (and its artifact when unshared) -> "
          "{deleted, name, version, artifacts_deleted}; "
          "409 naming the services whose SLA resolves to it or whose running instance uses it",
          None, (200, 404, 409)),
    Route("PUT", "/api/models/<name>/versions/<ref>/partitions/<sha256>",
          "A cluster records a partition of the version: {deployment_id, stage, ops: [start, end], flops, "
          "param_bytes, cut_bytes}", "json", (200, 400, 404)),
    Route("PUT", "/api/models/<name>/aliases/<alias>",
          "Point an alias at {version, expected?}: expected (int, or null = must not exist) is compared "
          "and set atomically (409 naming the current version)", "json", (200, 400, 404, 409)),
    Route("DELETE", "/api/models/<name>/aliases/<alias>",
          "Remove an alias (?expected=N: only if it names N, else 409) -> {name, alias, deleted, version}",
          None, (200, 400, 404, 409)),
    Route("GET", "/api/models/<name>/aliases",
          "{name, aliases: {alias: version}, events: [{alias, version, previous, by, at, seq}]}",
          None, (200, 404)),
    Route("PUT", "/api/models/<name>/versions/<ref>/profiles/<device_class>",
          "Store a ProfileResult (op ms per ONNX node) for this version and device class; last write wins",
          "json", (200, 400, 404)),
    Route("GET", "/api/models/<name>/versions/<ref>/profiles/<device_class>", "The stored profile",
          None, (200, 404)),
    Route("GET", "/api/models/<name>/versions/<ref>/profiles", "{profiles: {device_class: profile}}",
          None, (200, 404)),
    Route("DELETE", "/api/models/<name>/versions/<ref>/profiles",
          "Delete every stored profile of the version -> {name, version, device_classes_cleared}",
          None, (200, 404)),
    Route("DELETE", "/api/models/<name>/versions/<ref>/profiles/<device_class>",
          "Delete one class's profile -> {name, version, device_classes_cleared} (idempotent)",
          None, (200, 400, 404)),
    Route("POST", "/api/models/<name>/versions/<ref>/profile",
          "{device_class?}: clear the stored profiles and have an active cluster re-measure them -> "
          "{name, version, device_classes_cleared, cluster_id, cluster_name}",
          "json", (202, 400, 404, 422, 503)),
    Route("GET", "/api/artifacts/<sha256>", "Artifact bytes (streamed)", None, (200, 404)),
    Route("PUT", "/api/artifacts/<sha256>", "Store bytes under their sha256 (422 if they differ)",
          "bytes", (200, 201, 422)),
    Route("POST", "/api/training/<service_id>/<int:instance>/result",
          "{name, sha256 (PUT to /api/artifacts first), lineage, bytes_per_client_round}: register a "
          "federated training result as a new version (cluster token) -> version doc",
          "json", (201, 400, 404)),
    Route("GET", "/api/training/<service_id>/<int:instance>/aggregator",
          "A hierarchical training job's root aggregator (cluster token) -> {address}; 404 until it started",
          None, (200, 404)),
    Route("POST", "/api/application/", "Submit an SLA v2.0 -> {applications: [...]}; 404 naming "
          "...training.model when a training service's starting model does not resolve", "json",
          (201, 400, 404), "Sla"),
    Route("POST", "/api/apply",
          "Apply an SLA v2.0 idempotently by (customerID, application_name) -> {applications: "
          "[{applicationID, application_name, action, changes, microservices, redeployed, failures}]}",
          "json", (200, 400, 404, 409), "Sla"),
    Route("POST", "/api/plan",
          "Dry run of an SLA: each ML microservice planned by the best active cluster, nothing "
          "deployed -> {services: [{microservice_name, cluster_id, cluster_name, schedulable, "
          "strategy, predicted, stages, reasons, training (ml-training: server, clients, rejected, "
          "unschedulable, field)}]}",
          "json", (200, 400, 404, 422, 503), "Sla"),
    Route("GET", "/api/applications/", "[application doc]: the caller's (every user's for admins)"),
    Route("GET", "/api/applications/<user_id>", "[application doc] of one user (oneself unless admin)",
          None, (200, 404)),
    Route("GET", "/api/application/<application_id>", "Application doc", None, (200, 404)),
    Route("PUT", "/api/application/<application_id>",
          "{application_name?, application_namespace?, application_desc?} -> application doc",
          "json", (200, 400, 404, 409)),
    Route("DELETE", "/api/application/<application_id>", "Delete the application, its services and instances",
          None, (200, 404)),
    Route("GET", "/api/services/", "[service doc] of the caller (query: application_id)"),
    Route("GET", "/api/services/<application_id>", "[service doc] of one application", None, (200, 404)),
    Route("GET", "/api/service/<service_id>", "Service doc", None, (200, 404)),
    Route("GET", "/api/service/<service_id>/events",
          "{service_id, events: [{ts, kind, cause, instance, ...}]}: re-plans, retries, failures",
          None, (200, 404)),
    Route("DELETE", "/api/service/<service_id>", "Delete the service and its instances", None, (200, 404)),
    Route("POST", "/api/service/<service_id>/instance",
          "Resolve the model, pick a cluster, forward the job -> {service_id, instance, cluster_id}",
          None, (200, 400, 404, 422, 503)),
    Route("DELETE", "/api/service/<service_id>/instance/<int:instance>", "Undeploy one instance",
          None, (200, 404, 503)),
    Route("POST", "/api/clusters/register", "{cluster_name, cluster_location, url} -> {cluster_id}",
          "json", (200, 201, 400)),
    Route("GET", "/api/clusters/", "[{cluster_id, cluster_name, url, active, aggregate, ...}]"),
    Route("GET", "/api/clusters/active", "[cluster doc] of the active clusters"),
    Route("POST", "/api/clusters/tokens",
          "{name?} -> {token_id, owner, name, created_at, token}: a cluster token, shown once",
          "json", (201, 400, 401, 403)),
    Route("GET", "/api/clusters/tokens", "[{token_id, owner, name, created_at}] (no secrets)", None,
          (200, 401, 403)),
    Route("DELETE", "/api/clusters/tokens/<token_id>", "Revoke a cluster token -> {revoked}", None,
          (200, 401, 403, 404)),
    Route("GET", "/api/clusters/<cluster_id>", "One cluster", None, (200, 404)),
    Route("POST", "/api/information/<cluster_id>", "Cluster push: {aggregate, jobs: [...]}",
          "json", (200, 400, 404), "ClusterPush"),
    # the operator web UI (root_orchestrator.api.ui): its page, files and the views it polls
    Route("GET", "/", "Redirects to the web UI (/ui/)", None, (302,)),
    Route("GET", "/ui", "The operator web UI (HTML; signs in with /api/auth/login)"),
    Route("GET", "/ui/static/<path:name>", "The web UI's scripts, styles and vendored libraries", None,
          (200, 404)),
    Route("GET", "/ui/examples/<name>", "An example SLA the web UI's form loads", None, (200, 404)),
    Route("GET", "/api/ui/overview",
          "{now, clusters: [...], nodes: [node row with latest readings], services: [deployment row]}",
          None, (200, 401)),
    Route("GET", "/api/ui/service/<service_id>",
          "{service, strip, nodes, links, measured, events, explanation, problem}: one deployment for the UI",
          None, (200, 401, 404)),
)

def body_schemas() -> dict[str, Any]:
    """The request body schemas, taken from what validates the bodies (OpenAPI 3.1 is JSON Schema
    2020-12): the SLA v2.0 schema of deployment_descriptors (its ``$defs`` become ``Sla.<name>``
    components) and the typed cluster push of treeline_common.jobs (through wire.json_schema)."""
    sla = copy.deepcopy(sla_schema())
    defs = sla.pop("$defs", {})
    for key in ("$schema", "$id"):
        sla.pop(key, None)
    text = json.dumps({"Sla": sla, **{f"Sla.{name}": body for name, body in defs.items()}})
    schemas: dict[str, Any] = json.loads(text.replace('"#/$defs/', '"#/components/schemas/Sla.'))
    refs: dict[str, Any] = {}
    schemas["ClusterPush"] = json_schema(ClusterPush, refs)
    schemas.update(refs)
    return schemas


BEARER = "bearer"
SECURITY_SCHEMES = {BEARER: {
    "type": "http", "scheme": "bearer",
    "description": "A user's access token from POST /api/auth/login (a JWT), or a cluster token "
                   "(POST /api/clusters/tokens, or the root's --cluster-token) on the routes clusters use."}}


def openapi_document(server_url: str | None = None,
                     access: Mapping[tuple[str, str], Access] | None = None) -> dict[str, Any]:
    """The document; ``access`` (``{(METHOD, rule): Access}``, from the app) sets each operation's
    ``security`` (``[]`` for public routes) and ``x-treeline-access`` (who may call it)."""
    paths: dict[str, dict[str, Any]] = {}
    for route in ROUTES:
        op = operation(route)
        rule_access = (access or {}).get((route.method, route.rule))
        if rule_access is not None:
            op["security"] = [] if rule_access.public else [{BEARER: []}]
            op["x-treeline-access"] = rule_access.summary
            if not rule_access.public:
                for status, text in ((401, "Missing, forged, expired or revoked token"),
                                     (403, "The caller's role may not use this route")):
                    op["responses"].setdefault(str(status), error_response(text))
        paths.setdefault(openapi_path(route.rule), {})[route.method.lower()] = op
    doc: dict[str, Any] = {"openapi": "3.1.0",
                           "info": {"title": "Treeline root orchestrator", "version": "0.1.0",
                                    "description": (_pkg_doc or "").strip()},
                           "paths": paths,
                           "components": {"securitySchemes": SECURITY_SCHEMES, "schemas": body_schemas()},
                           "security": [{BEARER: []}]}
    if server_url:
        doc["servers"] = [{"url": server_url}]
    return doc
