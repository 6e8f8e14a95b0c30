"""The root's Flask app factory: wires injected stores, clock and cluster client into the blueprints.

``create_app`` does no I/O (stores are opened by the caller), so tests build an app on a fresh
database of the embedded MongoDB server with a fake clock and a fake cluster client. The
blueprints receive their dependencies through :mod:`root_orchestrator.api.context`; they never
import this module.

Every route is guarded (:mod:`root_orchestrator.api.guard`): ``security`` says how. Without one,
the app signs tokens with a random key and admits no anonymous caller at all (what tests want);
``python -m root_orchestrator`` builds it from its flags (:mod:`root_orchestrator.auth.settings`).
Routes answer with and without a trailing slash, as Oakestra's clients call both.
"""

from __future__ import annotations

import secrets

from flask import Flask

from root_orchestrator.api import (
    applications,
    auth,
    clusters,
    declarative,
    model_lifecycle,
    models,
    profiles,
    system,
    training,
    ui,
    users,
)
from root_orchestrator.api.context import RootContext, install
from root_orchestrator.api.guard import install_guard
from root_orchestrator.apply import Applier
from root_orchestrator.auth import AuthService, SecurityConfig
from root_orchestrator.cluster_choice import DEFAULT_ASK, ClusterChooser
from root_orchestrator.cluster_client import ClusterClient
from root_orchestrator.dryrun import DryRun
from root_orchestrator.failover import ClusterFailover
from root_orchestrator.identity import PROCESS_INSTANCE_ID
from root_orchestrator.instances import InstanceManager
from root_orchestrator.metrics import RootMetrics, install_metrics
from root_orchestrator.ranking import DEFAULT_ACTIVE_WINDOW_S
from root_orchestrator.stores import Stores
from root_orchestrator.uploads import body_limits, model_limit_mb
from treeline_common.clock import Clock
from treeline_common.http import JSON_BODY_LIMIT, install_body_limits, install_error_handlers
from treeline_common.request_context import install_request_ids

BLUEPRINTS = (system.bp, auth.bp, users.bp, models.bp, model_lifecycle.bp, profiles.bp, applications.bp,
              declarative.bp,
              clusters.bp, training.bp)


def create_app(stores: Stores, clock: Clock, cluster_client: ClusterClient, *,
               public_url: str = "http://127.0.0.1:10000",
               active_window_s: float = DEFAULT_ACTIVE_WINDOW_S,
               max_upload_mb: int | None = None, instance_id: str = PROCESS_INSTANCE_ID,
               security: SecurityConfig | None = None, ask_clusters: int = DEFAULT_ASK) -> Flask:
    """A root app over already-opened ``stores``; ``public_url`` is where clusters reach it;
    ``instance_id`` is what ``GET /api/health`` reports (the process's, unless a test sets one);
    ``ask_clusters`` is how many candidate clusters are asked for a dry-run plan per choice."""
    app = Flask("root_orchestrator", static_folder=None)
    app.url_map.strict_slashes = False  # before any rule is added: /api/applications == /api/applications/
    # request bodies: 1 MiB unless the route takes more (uploads: max_upload_mb, default
    # $TREELINE_MAX_MODEL_MB or 2048); 413 naming the limit (root_orchestrator.uploads)
    model_bytes = (max_upload_mb if max_upload_mb is not None else model_limit_mb()) << 20
    app.config["MAX_CONTENT_LENGTH"] = JSON_BODY_LIMIT
    app.config["TREELINE_MAX_MODEL_BYTES"] = model_bytes
    install_body_limits(app, body_limits(model_bytes))
    app.json.sort_keys = False  # type: ignore[attr-defined]
    manager = InstanceManager(stores, clock, cluster_client, public_url, active_window_s,
                              ClusterChooser(cluster_client, ask=ask_clusters))
    public_url = public_url.rstrip("/")
    install(app, RootContext(stores, clock, cluster_client, public_url, active_window_s, manager,
                             Applier(stores, manager), DryRun(stores, manager, cluster_client, public_url),
                             instance_id, ClusterFailover(manager)))
    # GET /metrics (internal access) and every request timed, refusals included: before the guard
    install_metrics(app, RootMetrics(stores, clock.now, active_window_s))
    install_guard(app, AuthService(stores.users, clock,
                                   security or SecurityConfig(jwt_secret=secrets.token_hex(32))))
    for bp in BLUEPRINTS:
        app.register_blueprint(bp)
    ui.install_ui(app)  # the operator web UI at /ui/ and the views it polls (root_orchestrator.api.ui)
    install_error_handlers(app)
    install_request_ids(app)  # X-Request-ID echoed; request/deployment ids in every log line
    return app
