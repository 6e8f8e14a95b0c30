"""Prometheus metrics of one cluster orchestrator: ``GET /metrics`` (text exposition format).

Public, like ``/api/nodes`` and ``/api/deployments/...``: the series carry node and deployment
ids, states and counts, no secret. One :class:`ClusterMetrics` per cluster app, with its own
``CollectorRegistry`` (never the library's global one: tests run several clusters in a process).
Series (prefix ``treeline_cluster_``):

- read at scrape time (:class:`ClusterCollector`): ``nodes{state="online"|"offline"}``,
  ``telemetry_age_seconds{node_id, node}`` (now minus the node's last heartbeat or telemetry;
  absent for a node never heard from), ``deployments{status}``,
  ``rollout{deployment_id, phase}`` (1 while a canary is in progress, with its traffic share in
  ``rollout_share{deployment_id}``), ``mqtt_dropped_messages_total{reason}`` (messages the bus
  received and did not hand on: ``unknown_topic``, ``bad_payload``, ``handler_error``);
- counted as it happens (through :attr:`ActionRunner.on_attempt`):
  ``replans_total{cause}``, one per planning attempt the reconcile rule started, by the cause's
  kind (:func:`cause_kind`: the reconcile cause without node names, so the label set is
  bounded), and ``deploy_attempt_seconds{cause}`` (histogram), how long each attempt ran
  (planning, downloads, stage start-up, a canary included).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client import Counter as CounterMetric
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from cluster_orchestrator.orchestrator import ClusterOrchestrator

# (pattern over the reconcile cause, kind) in order; cluster_orchestrator.reconcile writes the causes
_CAUSE_KINDS: tuple[tuple[re.Pattern[str], str], ...] = tuple((re.compile(p), k) for p, k in (
    (r"^new deployment$", "new"),
    (r"^resumed after a restart$", "resumed"),
    (r"^retry$", "retry"),
    (r"^repair$", "repair"),
    (r"^capacity returned", "capacity_returned"),
    (r"^node .* offline$", "node_offline"),
    (r"^node .* joined$", "node_joined"),
    (r"^node .* serves at a new address$", "node_moved"),
    (r"^a rollout was interrupted", "rollout_interrupted"),
    (r"^measured stage times drifted", "drift"),
))
# attempts run from a second (a cached tiny model) to minutes (downloads, profiling, a canary)
ATTEMPT_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)


def cause_kind(cause: str) -> str:
    """The bounded label of a reconcile cause: ``"node pi-1, pi-2 offline"`` -> ``node_offline``;
    an unknown cause is ``other``."""
    for pattern, kind in _CAUSE_KINDS:
        if pattern.search(cause):
            return kind
    return "other"


def node_series(nodes: Iterable[Mapping[str, Any]],
                now: float) -> tuple[Counter[str], list[tuple[str, str, float]]]:
    """``(nodes by "online"/"offline", [(node_id, name, telemetry age s)])``; a node never heard
    from (no ``last_seen``) has no age. Pure."""
    states: Counter[str] = Counter({"online": 0, "offline": 0})
    ages = []
    for doc in nodes:
        states["online" if doc.get("online") else "offline"] += 1
        seen = doc.get("last_seen")
        if isinstance(seen, int | float):
            ages.append((str(doc.get("node_id")), str(doc.get("name") or ""), max(0.0, now - float(seen))))
    return states, ages


class ClusterCollector(Collector):
    """Nodes, deployments, rollouts and MQTT drops, read per scrape through callables."""

    def __init__(self, nodes: Callable[[], list[dict[str, Any]]],
                 deployments: Callable[[], list[dict[str, Any]]], now: Callable[[], float],
                 dropped: Callable[[], dict[str, int]]) -> None:
        self._nodes = nodes
        self._deployments = deployments
        self._now = now
        self._dropped = dropped

    def collect(self) -> Iterable[GaugeMetricFamily | CounterMetricFamily]:
        states, ages = node_series(self._nodes(), self._now())
        family = GaugeMetricFamily("treeline_cluster_nodes", "registered nodes by state", labels=["state"])
        for state, count in sorted(states.items()):
            family.add_metric([state], count)
        yield family
        family = GaugeMetricFamily("treeline_cluster_telemetry_age_seconds",
                                   "seconds since the node's last heartbeat or telemetry",
                                   labels=["node_id", "node"])
        for node_id, name, age in ages:
            family.add_metric([node_id, name], age)
        yield family
        docs = self._deployments()
        family = GaugeMetricFamily("treeline_cluster_deployments", "deployments by status", labels=["status"])
        for status, count in sorted(Counter(str(d.get("status") or "UNKNOWN") for d in docs).items()):
            family.add_metric([status], count)
        yield family
        rollout = GaugeMetricFamily("treeline_cluster_rollout", "1 per deployment with a canary in progress",
                                    labels=["deployment_id", "phase"])
        share = GaugeMetricFamily("treeline_cluster_rollout_share",
                                  "the canary's share of the traffic (0..1)", labels=["deployment_id"])
        for doc in docs:
            canary = doc.get("rollout")
            if isinstance(canary, dict):
                rollout.add_metric([str(doc.get("deployment_id")), str(canary.get("phase") or "unknown")], 1)
                if isinstance(canary.get("share"), int | float):
                    share.add_metric([str(doc.get("deployment_id"))], float(canary["share"]))
        yield rollout
        yield share
        dropped = CounterMetricFamily("treeline_cluster_mqtt_dropped_messages",
                                      "MQTT messages received and not handled, by reason", labels=["reason"])
        for reason, count in sorted(self._dropped().items()):
            dropped.add_metric([reason], count)
        yield dropped


class ClusterMetrics:
    """The registry of one cluster app (see the module docstring)."""

    def __init__(self, nodes: Callable[[], list[dict[str, Any]]],
                 deployments: Callable[[], list[dict[str, Any]]], now: Callable[[], float],
                 dropped: Callable[[], dict[str, int]] | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.replans = CounterMetric("treeline_cluster_replans", "planning attempts started, by cause",
                                     ["cause"], registry=self.registry)
        self.attempts = Histogram("treeline_cluster_deploy_attempt_seconds",
                                  "how long one deployment attempt ran, by cause", ["cause"],
                                  buckets=ATTEMPT_BUCKETS, registry=self.registry)
        self.registry.register(ClusterCollector(nodes, deployments, now, dropped or dict))

    def attempt_done(self, cause: str, improve: bool, seconds: float) -> None:
        """One finished attempt (the :attr:`ActionRunner.on_attempt` hook)."""
        kind = cause_kind(cause)
        self.replans.labels(cause=kind).inc()
        self.attempts.labels(cause=kind).observe(seconds)

    def exposition(self) -> tuple[bytes, dict[str, str]]:
        """``(body, headers)`` of ``GET /metrics``."""
        return generate_latest(self.registry), {"Content-Type": CONTENT_TYPE_LATEST}


def core_metrics(core: ClusterOrchestrator,
                 dropped: Callable[[], dict[str, int]] | None = None) -> ClusterMetrics:
    """The metrics of ``core``, hooked to its finished attempts; ``dropped``: the bus's
    :meth:`MqttBus.dropped` (None: no drops to report)."""
    metrics = ClusterMetrics(core.list_nodes, core.book.list_deployments, core.clock.now, dropped)
    core.actions.on_attempt = metrics.attempt_done
    return metrics
