"""The operator web UI: its static page (``GET /ui/``) and the two JSON views it polls.

- ``GET /`` redirects to ``/ui/``; ``GET /ui/`` and ``GET /ui/static/<file>`` are public (the page
  holds no data: it logs in with ``POST /api/auth/login`` and keeps the token in the tab's
  ``sessionStorage``). The page is plain HTML with Alpine.js and uPlot vendored under
  ``root_orchestrator/ui/static/vendor/`` with their licences: no build step.
- ``GET /api/ui/overview`` (any signed-in user): clusters, every cluster's nodes with their latest
  readings (fetched from each active cluster's ``GET /api/nodes`` in parallel, cached for
  :data:`FLEET_TTL_S` so many open dashboards cost one fan-out per period) and the caller's
  deployments (admins: all). A cluster that cannot be asked is listed with its ``problem``.
- ``GET /api/ui/service/<service_id>`` (its owner or an admin): the service document, its
  placement strip (:func:`root_orchestrator.ui_views.strip`), the cluster's per-stage measured
  figures against the predictions, energy per inference, the cut links' measured bandwidth and
  the events, oldest first; for an ``ml-training`` service its ``training`` section
  (:func:`root_orchestrator.ui_training.training_view`: Flower placement, rounds, result).

Everything else the UI shows comes from the public REST API (models, aliases, profiles,
``POST /api/plan`` and ``POST /api/apply`` for the SLA form).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from flask import Blueprint, Flask, current_app, jsonify, redirect, send_from_directory
from werkzeug.wrappers import Response

from root_orchestrator import ui_training, ui_views
from root_orchestrator.api.context import context_of, ctx
from root_orchestrator.api.guard import access, principal, visible_service, visible_services
from root_orchestrator.auth.principals import OWNER, PUBLIC, SIGNED_IN
from root_orchestrator.ranking import is_active
from treeline_common.errors import NotFound, TreelineError

log = logging.getLogger(__name__)

bp = Blueprint("ui", __name__)
STATIC_DIR = Path(__file__).resolve().parent.parent / "ui" / "static"
FLEET_TTL_S = 1.0  # one fan-out to the clusters per second at most, whatever the number of dashboards
EXTENSION = "treeline_ui_fleet"


class FleetCache:
    """The clusters' node lists, fetched in parallel and kept for ``ttl_s`` seconds.

    ``fetch(cluster_url)`` returns one cluster's node documents or raises (the error, in plain
    words, becomes the cluster's ``problem``). A cluster that cannot be asked keeps the nodes it
    last answered, marked stale (``{url: (nodes, problem)}`` with a problem set), so an
    operator still sees which nodes it had. Thread-safe: callers within the TTL share one fan-out.
    """

    def __init__(self, fetch: Callable[[str], list[dict[str, Any]]], ttl_s: float = FLEET_TTL_S,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self._fetch = fetch
        self._ttl = ttl_s
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._at = -float("inf")
        self._key: tuple[str, ...] = ()
        self._found: dict[str, tuple[list[dict[str, Any]], str | None]] = {}
        self._last_good: dict[str, list[dict[str, Any]]] = {}

    def nodes(self, urls: list[str]) -> dict[str, tuple[list[dict[str, Any]], str | None]]:
        """``{url: (nodes, problem)}`` for every url (problem None when it answered)."""
        key = tuple(sorted(urls))
        with self._lock:
            if key == self._key and self._monotonic() - self._at < self._ttl:
                return self._found
            found = self._ask(list(key))
            for url, (nodes, problem) in found.items():
                if problem is None:
                    self._last_good[url] = nodes
                else:
                    found[url] = (self._last_good.get(url, []), problem)
            self._found, self._key, self._at = found, key, self._monotonic()
            return found

    def _ask(self, urls: list[str]) -> dict[str, tuple[list[dict[str, Any]], str | None]]:
        if not urls:
            return {}

        def one(url: str) -> tuple[list[dict[str, Any]], str | None]:
            try:
                return self._fetch(url), None
            except TreelineError as exc:
                return [], ui_views.plain_problem(exc.message)
            except Exception as exc:  # noqa: BLE001 - a broken cluster must not break the dashboard
                log.warning("web UI: nodes of %s: %s", url, exc)
                return [], ui_views.plain_problem(f"{type(exc).__name__}: {exc}")

        with ThreadPoolExecutor(max_workers=min(8, len(urls)), thread_name_prefix="ui-fleet") as pool:
            return dict(zip(urls, pool.map(one, urls), strict=True))


def install_ui(app: Flask) -> None:
    """Give ``app`` its fleet cache (over the context's cluster client) and the UI routes."""
    app.extensions[EXTENSION] = FleetCache(context_of(app).cluster_client.nodes)
    app.register_blueprint(bp)


def _fleet() -> FleetCache:
    cache = current_app.extensions[EXTENSION]
    if not isinstance(cache, FleetCache):
        raise RuntimeError(f"app.extensions[{EXTENSION!r}] is not a FleetCache")
    return cache


# -- the page ----------------------------------------------------------------------------------------

@bp.get("/")
@access(PUBLIC)
def home() -> Any:
    return redirect("/ui/", code=302)


@bp.get("/ui")
@access(PUBLIC)
def page() -> Response:
    response = send_from_directory(STATIC_DIR, "index.html", max_age=0)
    response.headers["Cache-Control"] = "no-cache"
    return response


@bp.get("/ui/static/<path:name>")
@access(PUBLIC)
def static(name: str) -> Response:
    return send_from_directory(STATIC_DIR, name, max_age=300)


EXAMPLES_DIR = Path(__file__).resolve().parents[2] / "deployment_descriptors" / "examples"


@bp.get("/ui/examples/<name>")
@access(PUBLIC)
def example(name: str) -> Response:
    """An example SLA the form loads (``deployment_descriptors/examples/``)."""
    return send_from_directory(EXAMPLES_DIR, name, max_age=300, mimetype="application/json")


# -- the views it polls ------------------------------------------------------------------------------

def _active_clusters() -> list[tuple[dict[str, Any], bool]]:
    c = ctx()
    now = c.clock.now()
    return [(d, is_active(d, now, c.active_window_s)) for d in c.stores.clusters.list()]


def _application_names() -> dict[str, str]:
    """Names of the applications the caller may see (all for admins)."""
    who = principal()
    return {str(a.get("applicationID")): str(a.get("application_name"))
            for a in ctx().stores.applications.list_applications(None if who.is_admin else who.id)}


def _fleet_rows() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    clusters = _active_clusters()
    answers = _fleet().nodes([str(d.get("url")) for d, active in clusters if active and d.get("url")])
    now = ctx().clock.now()
    cluster_rows: list[dict[str, Any]] = []
    node_rows: list[dict[str, Any]] = []
    for doc, active in clusters:
        nodes, problem = answers.get(str(doc.get("url")), ([], None))
        if not active:
            problem = ui_views.silent_for(doc, now)
        cluster_rows.append(ui_views.cluster_row(doc, active, problem))
        node_rows.extend(ui_views.node_row(n, doc, now, reachable=problem is None) for n in nodes)
    return cluster_rows, node_rows


@bp.get("/api/ui/overview")
@access(SIGNED_IN)
def overview() -> Any:
    """``{now, clusters: [...], nodes: [...], services: [...]}`` (module docstring)."""
    clusters, nodes = _fleet_rows()
    names = _application_names()
    services = [ui_views.service_row(s, names) for s in visible_services(ctx().stores)]
    return jsonify({"now": ctx().clock.now(), "clusters": clusters, "nodes": nodes, "services": services})


@bp.get("/api/ui/service/<service_id>")
@access(OWNER)
def service_detail(service_id: str) -> Any:
    """``{service, strip, links, measured, events, explanation, training, problem}``; ``problem``
    says why measured figures are missing (the cluster could not be asked); ``training`` is None
    unless the service is an ``ml-training`` one."""
    c = ctx()
    service = visible_service(c.stores, service_id)
    version = _model_version(service)
    strip = ui_views.strip(service, version)
    _, nodes = _fleet_rows()
    measured_reports, problem = _measured(service)
    instance: dict[str, Any] = next(iter(service.get("instances") or []), {})
    events = sorted(({**e, "instance": i.get("instance")} for i in service.get("instances") or []
                     for e in i.get("events") or []), key=lambda e: float(e.get("ts") or 0.0))
    explanation = instance.get("explanation") or service.get("explanation")
    names = {str(n["node_id"]): str(n.get("name") or n["node_id"]) for n in nodes}
    return jsonify({
        "service": service, "strip": strip, "nodes": [n for n in nodes if n["node_id"] in
                                                     {s["node_id"] for s in strip["stages"]}],
        "links": ui_views.links_of(strip["stages"], nodes),
        "measured": ui_views.measured_view(strip["stages"], measured_reports, nodes),
        "events": events,
        "explanation": explanation,
        "training": ui_training.training_view(service, events, names, explanation),
        "problem": problem,
    })


def _model_version(service: dict[str, Any]) -> dict[str, Any] | None:
    resolved = (service.get("model") or {}).get("resolved") or {}
    if not resolved.get("name"):
        return None
    models = ctx().stores.models
    try:
        doc = models.get_version(str(resolved["name"]), int(resolved.get("version") or 0))
        return {**doc, "partitions": models.list_partitions(str(resolved["name"]), int(doc["version"]))}
    except (NotFound, ValueError, KeyError):
        return None


def _measured(service: dict[str, Any]) -> tuple[list[dict[str, Any]], str | None]:
    c = ctx()
    instance = next(iter(service.get("instances") or []), None)
    cluster_id = (instance or {}).get("cluster_id") or service.get("cluster_id")
    if instance is None or not cluster_id:
        return [], "not deployed"
    try:
        cluster = c.stores.clusters.get(str(cluster_id))
        view = c.cluster_client.deployment(str(cluster.get("url")), str(service.get("service_id")),
                                           int(instance.get("instance") or 0))
    except TreelineError as exc:
        return [], exc.message
    reports = view.get("measured")
    return ([r for r in reports if isinstance(r, dict)] if isinstance(reports, list) else []), None
