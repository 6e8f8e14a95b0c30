"""The cluster's REST API (contracts.md, "Cluster REST") as a Flask app over the core.

Thin on purpose: each route validates its input through the core and maps the answer to
JSON; errors become ``{"error": {code, message, details}}`` via treeline_common.http.
"""

from __future__ import annotations

import logging
import uuid
from importlib import metadata
from typing import Any

from flask import Flask, jsonify, request

from cluster_orchestrator import dryrun
from cluster_orchestrator.orchestrator import ClusterOrchestrator
from treeline_common.http import JSON_BODY_LIMIT, install_error_handlers, json_body

log = logging.getLogger(__name__)


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


def _version() -> str:
    try:
        return metadata.version("treeline")
    except metadata.PackageNotFoundError:
        return "unknown"


def create_app(core: ClusterOrchestrator, instance_id: str | None = None) -> Flask:
    """The REST app over ``core``. ``instance_id`` (default: a new uuid, made once per app, i.e.
    at process start) is what ``GET /api/health`` reports, so ``treeline up`` can tell its own
    cluster from another stack's listening on the same port."""
    app = Flask("cluster_orchestrator")
    app.config["MAX_CONTENT_LENGTH"] = JSON_BODY_LIMIT  # every body here is a small JSON document
    install_error_handlers(app)
    identity = {"status": "ok", "instance_id": instance_id or str(uuid.uuid4()), "name": core.config.name,
                "version": _version()}

    @app.get("/status")
    def status() -> Any:
        return jsonify(core.status())

    @app.get("/api/health")
    def health() -> Any:
        return jsonify(identity)

    @app.post("/api/node/register")
    def register_node() -> Any:
        return jsonify(core.register_node(json_body(request)))

    @app.get("/api/nodes")
    def list_nodes() -> Any:
        return jsonify({"nodes": [_node_view(d) for d in core.list_nodes()]})

    @app.post("/api/service/<service_id>/<instance>")
    def deploy(service_id: str, instance: str) -> Any:
        doc = core.submit_job(service_id, instance, json_body(request))
        return jsonify({"service_id": service_id, "instance": doc["instance"],
                        "deployment_id": doc["deployment_id"], "status": doc["status"]}), 202

    @app.delete("/api/service/<service_id>/<instance>")
    def delete(service_id: str, instance: str) -> Any:
        doc = core.delete_job(service_id, instance)
        return jsonify({"service_id": service_id, "instance": doc["instance"], "status": doc["status"]})

    @app.get("/api/artifacts/<sha256>")
    def artifact(sha256: str) -> Any:
        return core.artifact(sha256), 200, {"Content-Type": "application/octet-stream"}

    @app.get("/api/deployments/<service_id>/<instance>")
    def deployment(service_id: str, instance: str) -> Any:
        return jsonify(core.get_deployment(service_id, instance))

    @app.post("/api/plan")
    def plan() -> Any:
        """Dry run of a JobRequest: the plan summary, nothing deployed (:mod:`.dryrun`)."""
        return jsonify(dryrun.plan_summary(core, dryrun.parse_plan_job(json_body(request))))

    @app.post("/api/models/profile")
    def remeasure() -> Any:
        """``{name, version, sha256, device_class}``: re-measure op times in the background (202)."""
        # the core's own publish (it drops messages while no bus is set); core has no public one yet
        return jsonify(dryrun.start_remeasure(core, json_body(request), core.publish)), 202

    return app
