"""Prometheus metrics of one root app: ``GET /metrics`` (text exposition format).

Who may scrape: the route is *internal* (:data:`~root_orchestrator.auth.principals.INTERNAL`),
like the routes clusters call: a cluster token, an admin's or an infrastructure provider's bearer
token; in development mode (anonymous internal callers admitted) also a caller without a token,
on loopback only. A Prometheus server elsewhere scrapes with ``authorization: {credentials: <a
cluster token>}`` in its scrape config.

One :class:`RootMetrics` per app, with its own ``CollectorRegistry`` (never the library's global
one: tests build many roots in one process). Series (prefix ``treeline_root_``):

- ``http_request_duration_seconds{route, method, status}`` (histogram): every request the app
  answered, labelled by its Flask rule (``/api/services/<service_id>``, so the label set is
  bounded; ``<unmatched>`` for a 404 without a rule); its ``_count`` is the request counter;
- read from the stores at scrape time (:class:`StoreCollector`): ``applications``,
  ``services{status}``, ``instances{status}``, ``clusters``, ``clusters_active`` (pushed or
  registered within the active window), ``rollout_events{kind}`` and ``failover_moves``: events
  in the instances' kept histories (the newest ``MAX_EVENTS`` per instance, so these are gauges
  of what is on record, not counters since start).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

from flask import Blueprint, Flask, Response, current_app, g, request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from root_orchestrator.api.guard import access
from root_orchestrator.auth.principals import INTERNAL
from root_orchestrator.ranking import is_active
from root_orchestrator.stores import Stores

EXTENSION = "treeline_metrics"
UNMATCHED = "<unmatched>"
# the root's requests run from ~1 ms (health) to tens of seconds (a model upload, a dry run)
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

bp = Blueprint("metrics", __name__)


def tally_events(services: Iterable[dict[str, Any]]) -> tuple[Counter[str], Counter[str], int]:
    """``(instances by status, rollout events by kind, failover moves)`` over ``services``' docs.

    A rollout event is one whose ``kind`` starts with ``rollout``; a failover move is a ``moved``
    event (the instance went to another cluster). Pure: tests call it on plain dicts."""
    statuses: Counter[str] = Counter()
    rollouts: Counter[str] = Counter()
    moves = 0
    for service in services:
        for inst in service.get("instances") or []:
            statuses[str(inst.get("status") or "UNKNOWN")] += 1
            for event in inst.get("events") or []:
                kind = str(event.get("kind") or "")
                if kind.startswith("rollout"):
                    rollouts[kind] += 1
                elif kind == "moved":
                    moves += 1
    return statuses, rollouts, moves


def _gauge(name: str, help_text: str, values: Counter[str] | None = None, label: str = "",
           value: float | None = None) -> GaugeMetricFamily:
    if values is None:
        return GaugeMetricFamily(name, help_text, value=value)
    family = GaugeMetricFamily(name, help_text, labels=[label])
    for key, count in sorted(values.items()):
        family.add_metric([key], count)
    return family


class StoreCollector(Collector):
    """Applications, services, instances, clusters and events, read from the stores per scrape."""

    def __init__(self, stores: Stores, now: Callable[[], float], active_window_s: float) -> None:
        self._stores = stores
        self._now = now
        self._window = active_window_s

    def collect(self) -> Iterable[GaugeMetricFamily]:
        services = self._stores.applications.list_services()
        instances, rollouts, moves = tally_events(services)
        clusters = self._stores.clusters.list()
        now = self._now()
        yield _gauge("treeline_root_applications", "applications",
                     value=len(self._stores.applications.list_applications()))
        yield _gauge("treeline_root_services", "services by status",
                     Counter(str(s.get("status") or "UNKNOWN") for s in services), "status")
        yield _gauge("treeline_root_instances", "service instances by status", instances, "status")
        yield _gauge("treeline_root_clusters", "registered clusters", value=len(clusters))
        yield _gauge("treeline_root_clusters_active", "clusters that pushed within the active window",
                     value=sum(1 for c in clusters if is_active(c, now, self._window)))
        yield _gauge("treeline_root_rollout_events", "rollout events on record in the instances' histories",
                     rollouts, "kind")
        yield _gauge("treeline_root_failover_moves", "instances moved to another cluster, on record",
                     value=moves)


class RootMetrics:
    """The registry of one root app and its request histogram (see the module docstring)."""

    def __init__(self, stores: Stores, now: Callable[[], float], active_window_s: float) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.latency = Histogram("treeline_root_http_request_duration_seconds",
                                 "time to answer one HTTP request, by Flask rule, method and status",
                                 ["route", "method", "status"], buckets=LATENCY_BUCKETS,
                                 registry=self.registry)
        self.registry.register(StoreCollector(stores, now, active_window_s))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


def install_metrics(app: Flask, metrics: RootMetrics) -> None:
    """Time every request of ``app`` and serve ``GET /metrics``. Call before the auth guard is
    installed, so that requests it refuses are timed too."""
    if EXTENSION in app.extensions:
        raise RuntimeError(f"{app.name} already has metrics")
    app.extensions[EXTENSION] = metrics

    @app.before_request
    def _started() -> None:
        g.treeline_started = time.perf_counter()

    @app.after_request
    def _observed(response: Response) -> Response:
        started = g.get("treeline_started")
        if started is not None:
            rule = request.url_rule.rule if request.url_rule is not None else UNMATCHED
            metrics.latency.labels(route=rule, method=request.method,
                                   status=str(response.status_code)).observe(time.perf_counter() - started)
        return response

    app.register_blueprint(bp)


@bp.get("/metrics")
@access(INTERNAL)
def metrics_page() -> Response:
    """The Prometheus text exposition of this root (internal: see the module docstring)."""
    metrics = current_app.extensions[EXTENSION]
    if not isinstance(metrics, RootMetrics):
        raise RuntimeError(f"app.extensions[{EXTENSION!r}] is not RootMetrics")
    return Response(metrics.exposition(), mimetype=None, content_type=CONTENT_TYPE_LATEST)
