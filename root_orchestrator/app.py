"""The root's Flask app factory: wires injected stores, clock and cluster client into the blueprints.

``create_app`` does no I/O (stores are opened by the caller), so tests build an app on
mongomock or a temp SQLite directory with a fake clock and a fake cluster client.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from flask import Flask, current_app

from treeline_common.clock import Clock
from treeline_common.http import install_error_handlers

from root_orchestrator.cluster_client import ClusterClient
from root_orchestrator.instances import InstanceManager
from root_orchestrator.ranking import DEFAULT_ACTIVE_WINDOW_S
from root_orchestrator.stores import Stores

log = logging.getLogger(__name__)

EXTENSION = "treeline_root"


@dataclass
class RootContext:
    stores: Stores
    clock: Clock
    cluster_client: ClusterClient
    public_url: str
    active_window_s: float
    instances: InstanceManager


def ctx() -> RootContext:
    """The context of the app handling the current request."""
    return current_app.extensions[EXTENSION]  # type: ignore[no-any-return]


def create_app(stores: Stores, clock: Clock, cluster_client: ClusterClient, *,
               public_url: str = "http://127.0.0.1:10000",
               active_window_s: float = DEFAULT_ACTIVE_WINDOW_S,
               max_upload_mb: int = 2048) -> Flask:
    from root_orchestrator.api.applications import bp as applications_bp
    from root_orchestrator.api.clusters import bp as clusters_bp
    from root_orchestrator.api.models import bp as models_bp
    from root_orchestrator.api.profiles import bp as profiles_bp
    from root_orchestrator.api.system import bp as system_bp

    app = Flask("root_orchestrator", static_folder=None)
    app.config["MAX_CONTENT_LENGTH"] = max_upload_mb << 20
    app.json.sort_keys = False  # type: ignore[attr-defined]
    manager = InstanceManager(stores, clock, cluster_client, public_url, active_window_s)
    app.extensions[EXTENSION] = RootContext(stores, clock, cluster_client, public_url.rstrip("/"),
                                            active_window_s, manager)
    for bp in (system_bp, models_bp, profiles_bp, applications_bp, clusters_bp):
        app.register_blueprint(bp)
    install_error_handlers(app)
    return app
