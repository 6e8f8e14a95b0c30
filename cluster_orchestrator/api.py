"""The cluster's REST API (contracts.md, "Cluster REST") as a Flask app over the core.

Thin on purpose: each route validates its input through the core and maps the answer to
JSON; errors become ``{"error": {code, message, details}}`` via treeline_common.http.

Who may call what (:class:`ClusterAccess`; docs/contracts.md "Cluster REST"); each view declares
its :class:`~cluster_orchestrator.openapi.Credential` with the check it runs (``needs`` in
:func:`create_app`), and ``GET /api/openapi.json`` (public) publishes them as each operation's
``security``:

- ``POST /api/node/register``: a join token (``Authorization: Bearer <join token>``) when the
  cluster has join tokens; the answer carries the node's own MQTT credentials when the cluster
  owns the broker's password file;
- the root's routes (``POST|DELETE /api/service/...``, ``POST /api/plan``, ``POST
  /api/models/profile``): the root's credential, ``Authorization: Bearer <the cluster token>``
  (the one this cluster uses with the root, ``--root-token``) when the cluster has one;
- ``/api/join-tokens``: the root's credential or the cluster's initial join token;
- ``GET /api/artifacts/<sha256>`` (the models and partitions nodes download): a valid join token
  (the node engine sends the one it registered with) or the root's credential, when the cluster
  has join tokens;
- open: ``GET /api/health``, ``GET /status``, ``GET /api/openapi.json``, ``GET /api/nodes`` and
  ``GET /api/deployments/...`` (read-only views without secrets).

A missing or wrong credential is 401 ``UNAUTHORIZED`` with ``WWW-Authenticate: Bearer``. An app
built without an access (tests, embedding) leaves every route open, as before.
"""

from __future__ import annotations

import functools
import hmac
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from flask import Flask, Response, jsonify, request

from cluster_orchestrator import dryrun, inference_v2
from cluster_orchestrator.metrics import ClusterMetrics, core_metrics
from cluster_orchestrator.mqtt_auth import MqttCredentials
from cluster_orchestrator.nodes import JoinTokens
from cluster_orchestrator.openapi import Credential, openapi_document
from cluster_orchestrator.orchestrator import ClusterOrchestrator
from treeline_common.errors import InvalidInput, NotFound, Unauthorized
from treeline_common.health import health_body
from treeline_common.http import JSON_BODY_LIMIT, install_error_handlers, json_body
from treeline_common.request_context import install_request_ids

log = logging.getLogger(__name__)

View = TypeVar("View", bound=Callable[..., Any])
_CREDENTIAL = "treeline_credential"


def credential_of(view: Callable[..., Any]) -> Credential | None:
    """The credential a view declared with :func:`_needs` (None: it declared none)."""
    found = getattr(view, _CREDENTIAL, None)
    return found if isinstance(found, Credential) else None


def served_credentials(app: Flask) -> dict[tuple[str, str], Credential]:
    """``{(METHOD, rule): credential}`` of every route ``app`` serves whose view declares one."""
    found: dict[tuple[str, str], Credential] = {}
    for rule in app.url_map.iter_rules():
        credential = credential_of(app.view_functions[rule.endpoint])
        if credential is not None:
            for method in (rule.methods or set()) - {"HEAD", "OPTIONS"}:
                found[(method, rule.rule)] = credential
    return found


def _node_view(doc: dict[str, Any]) -> dict[str, Any]:
    return {
        "node_id": doc["node_id"], "name": doc["name"], "profile": doc.get("profile"),
        "online": bool(doc.get("online")), "last_seen": doc.get("last_seen"),
        "telemetry": doc.get("telemetry") or {}, "emulated": doc.get("emulated", False),
        "arch": doc.get("arch"), "cpu_count": doc.get("cpu_count"),
        "memory_limit_mb": doc.get("memory_limit_mb"), "speed_factor": doc.get("speed_factor"),
        "accelerators": doc.get("accelerators") or [], "battery": doc.get("battery"),
        "labels": doc.get("labels") or [], "data_endpoint": doc.get("data_endpoint"),
        "registered_at": doc.get("registered_at"),
    }


@dataclass(frozen=True)
class ClusterAccess:
    """The cluster's credentials checks (module docstring). None/empty: that check is off."""

    root_token: str | None = None  # the root's calls must carry it
    join_tokens: JoinTokens | None = None  # node registration needs one of them
    mqtt: MqttCredentials | None = None  # per-node MQTT credentials in the registration answer
    mqtt_tls: bool = False  # told to nodes in the registration answer


def _bearer() -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.strip().partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def _unauthorized(reason: str) -> Unauthorized:
    return Unauthorized(f"authentication required: {reason}", [{"path": "Authorization", "message": reason}])


def _is_root(access: ClusterAccess, token: str | None) -> bool:
    return bool(access.root_token and token) and hmac.compare_digest(
        str(token).encode(), str(access.root_token).encode())


def create_app(core: ClusterOrchestrator, instance_id: str | None = None,
               access: ClusterAccess | None = None, metrics: ClusterMetrics | None = None) -> Flask:
    """The REST app over ``core``. ``instance_id`` (default: a new uuid, made once per app, i.e.
    at process start) is what ``GET /api/health`` reports, so ``treeline up`` can tell its own
    cluster from another stack's listening on the same port. ``access``: the credential checks
    (module docstring); None leaves every route open. ``metrics``: what ``GET /metrics`` serves
    (default: :func:`~.metrics.core_metrics` of ``core``, without MQTT drops)."""
    app = Flask("cluster_orchestrator")
    app.config["MAX_CONTENT_LENGTH"] = JSON_BODY_LIMIT  # every body here is a small JSON document
    install_error_handlers(app)
    install_request_ids(app)  # X-Request-ID echoed; request/deployment ids in every log line
    identity = health_body(instance_id or str(uuid.uuid4()), core.config.name)
    guard = access or ClusterAccess()
    served_metrics = metrics or core_metrics(core)

    def from_root() -> None:
        """The root's routes: its credential when this cluster has one."""
        if guard.root_token and not _is_root(guard, _bearer()):
            raise _unauthorized("the root's cluster token is required")

    def join_tokens() -> JoinTokens:
        if guard.join_tokens is None:
            raise NotFound("this cluster has no join tokens",
                           [{"path": "join_tokens", "message": "disabled"}])
        return guard.join_tokens

    def joining() -> None:
        """Node registration: a join token when this cluster has join tokens."""
        if guard.join_tokens is not None and guard.join_tokens.find(_bearer()) is None:
            raise _unauthorized("a valid join token is required (node engine --join-token)")

    def node() -> None:
        """Artifact downloads: a join token (or the root's credential) when this cluster has join tokens."""
        if guard.join_tokens is None:
            return
        token = _bearer()
        if not (_is_root(guard, token) or guard.join_tokens.find(token) is not None):
            raise _unauthorized("a valid join token is required (the node engine's --join-token)")

    def admin() -> None:
        """``/api/join-tokens``: the root's credential or the initial join token."""
        token = _bearer()
        held = join_tokens().find(token)
        if not (_is_root(guard, token) or (held is not None and held.get("initial"))):
            raise _unauthorized("the cluster's initial join token or the root's cluster token is required")

    checks: dict[Credential, Callable[[], None]] = {
        Credential.PUBLIC: lambda: None, Credential.ROOT: from_root, Credential.JOIN: joining,
        Credential.JOIN_ADMIN: admin, Credential.NODE: node}

    def needs(credential: Credential) -> Callable[[View], View]:
        """Run ``credential``'s check before the view, and declare it (for the OpenAPI document)."""
        def wrap(view: View) -> View:
            @functools.wraps(view)
            def checked(*args: Any, **kwargs: Any) -> Any:
                checks[credential]()
                return view(*args, **kwargs)

            setattr(checked, _CREDENTIAL, credential)
            return checked  # type: ignore[return-value]
        return wrap

    @app.after_request
    def challenge(response: Response) -> Response:
        if response.status_code == 401:
            response.headers["WWW-Authenticate"] = "Bearer"
        return response

    @app.get("/status")
    @needs(Credential.PUBLIC)
    def status() -> Any:
        return jsonify(core.status())

    @app.get("/api/health")
    @needs(Credential.PUBLIC)
    def health() -> Any:
        return jsonify(identity)

    @app.get("/metrics")
    @needs(Credential.PUBLIC)
    def prometheus() -> Any:
        """Prometheus text exposition (:mod:`.metrics`): public, like ``/api/nodes``."""
        return served_metrics.exposition()

    @app.get("/api/openapi.json")
    @needs(Credential.PUBLIC)
    def openapi() -> Any:
        return jsonify(openapi_document(core.config.public_url, served_credentials(app)))

    @app.post("/api/node/register")
    @needs(Credential.JOIN)
    def register_node() -> Any:
        answer = core.register_node(json_body(request))
        if guard.mqtt is not None:
            answer.update(guard.mqtt.issue(str(answer["node_id"])))
        if guard.mqtt_tls:
            answer["mqtt_tls"] = True
        return jsonify(answer)

    @app.post("/api/join-tokens")
    @needs(Credential.JOIN_ADMIN)
    def create_join_token() -> Any:
        """``{name?}`` -> 201 ``{token_id, name, created_at, initial, token}`` (the token shown once)."""
        tokens = join_tokens()
        body = json_body(request) if request.get_data(cache=True) else {}
        name = body.get("name", "") if isinstance(body, dict) else None
        if not isinstance(name, str) or len(name) > 128:
            raise InvalidInput("invalid join token name",
                               [{"path": "name", "message": "a string of at most 128 characters"}])
        doc, token = tokens.create(name)
        return jsonify({**doc, "token": token}), 201

    @app.get("/api/join-tokens")
    @needs(Credential.JOIN_ADMIN)
    def list_join_tokens() -> Any:
        return jsonify({"join_tokens": join_tokens().list()})

    @app.delete("/api/join-tokens/<token_id>")
    @needs(Credential.JOIN_ADMIN)
    def revoke_join_token(token_id: str) -> Any:
        return jsonify({"revoked": join_tokens().revoke(token_id)})

    @app.get("/api/nodes")
    @needs(Credential.PUBLIC)
    def list_nodes() -> Any:
        return jsonify({"nodes": [_node_view(d) for d in core.list_nodes()]})

    @app.post("/api/service/<service_id>/<instance>")
    @needs(Credential.ROOT)
    def deploy(service_id: str, instance: str) -> Any:
        doc = core.submit_job(service_id, instance, json_body(request))
        return jsonify({"service_id": service_id, "instance": doc["instance"],
                        "deployment_id": doc["deployment_id"], "status": doc["status"]}), 202

    @app.delete("/api/service/<service_id>/<instance>")
    @needs(Credential.ROOT)
    def delete(service_id: str, instance: str) -> Any:
        doc = core.delete_job(service_id, instance)
        return jsonify({"service_id": service_id, "instance": doc["instance"], "status": doc["status"]})

    @app.get("/api/artifacts/<sha256>")
    @needs(Credential.NODE)
    def artifact(sha256: str) -> Any:
        return core.artifact(sha256), 200, {"Content-Type": "application/octet-stream"}

    @app.get("/api/deployments/<service_id>/<instance>")
    @needs(Credential.PUBLIC)
    def deployment(service_id: str, instance: str) -> Any:
        return jsonify(core.get_deployment(service_id, instance))

    @app.post("/api/plan")
    @needs(Credential.ROOT)
    def plan() -> Any:
        """Dry run of a JobRequest: the plan summary, nothing deployed (:mod:`.dryrun`)."""
        return jsonify(dryrun.plan_summary(core, dryrun.parse_plan_job(json_body(request))))

    @app.post("/api/models/profile")
    @needs(Credential.ROOT)
    def remeasure() -> Any:
        """``{name, version, sha256, device_class}``: re-measure op times in the background (202)."""
        # the core's own publish (it drops messages while no bus is set); core has no public one yet
        return jsonify(dryrun.start_remeasure(core, json_body(request), core.publish)), 202

    inference_v2.register(app, core, needs(Credential.PUBLIC))
    return app
