"""The kinds of object ``treeline get`` lists: where each comes from, its table columns, and how a
name resolves to one of them.

:class:`World` reads what a command needs from the root, once per command: applications,
services, clusters, and the nodes from each cluster's own API (the root does not keep them).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from treeline_cli.errors import Failure, UsageError
from treeline_cli.output import Column
from treeline_cli.resolve import (
    Doc,
    app_id,
    app_name,
    resolve_app,
    resolve_one,
    resolve_service,
    split_model_ref,
)
from treeline_cli.root_client import RootClient


class World:
    """Lazily fetched, cached documents from the root (one command's view of the system)."""

    def __init__(self, client: RootClient) -> None:
        self.client = client
        self.node_problems: list[str] = []

    @functools.cached_property
    def apps(self) -> list[Doc]:
        return self.client.applications()

    @functools.cached_property
    def services(self) -> list[Doc]:
        return self.client.services()

    @functools.cached_property
    def clusters(self) -> list[Doc]:
        return self.client.clusters()

    @functools.cached_property
    def nodes(self) -> list[Doc]:
        nodes, self.node_problems = self.client.nodes()
        return nodes

    def node_names(self) -> dict[str, str]:
        """node id -> name, best effort (an unreachable cluster leaves its ids as they are)."""
        try:
            return {str(n.get("node_id")): str(n.get("name")) for n in self.nodes}
        except Exception:  # noqa: BLE001 - names only decorate ids; never fail a command over them
            return {}

    def app_names(self) -> dict[str, str]:
        return {app_id(a): app_name(a) for a in self.apps}

    def deployments(self) -> list[Doc]:
        """One row per service instance (what a cluster deploys), with the service's names."""
        rows = []
        names = self.app_names()
        for service in self.services:
            for instance in service.get("instances") or []:
                placement = instance.get("placement") or {}
                rows.append({**instance,
                             "deployment_id": placement.get("deployment_id")
                             or f"{service.get('service_id')}-{instance.get('instance', 0)}",
                             "service_id": service.get("service_id"),
                             "microservice_name": service.get("microservice_name"),
                             "application_name": names.get(str(service.get("application_id")), "")})
        return rows

    def events(self, services: Sequence[Doc]) -> list[Doc]:
        """The events of ``services``, each with its service's name, oldest first."""
        rows = []
        for service in services:
            for event in self.client.service_events(str(service.get("service_id"))):
                rows.append({**event, "service_id": service.get("service_id"),
                             "microservice_name": service.get("microservice_name")})
        return sorted(rows, key=lambda e: float(e.get("ts") or 0.0))


# ---------------------------------------------------------------- cell helpers


def age(ts: Any, now: float | None = None) -> str:
    """``12s``, ``5m``, ``3h``, ``2d`` since a unix timestamp; ``-`` when unknown."""
    if not isinstance(ts, int | float) or isinstance(ts, bool) or ts <= 0:
        return "-"
    seconds = max(0.0, (time.time() if now is None else now) - float(ts))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def ms(value: Any) -> str:
    return f"{float(value):.2f}" if isinstance(value, int | float) and not isinstance(value, bool) else "-"


def yes_no(value: Any) -> str:
    return "yes" if value else "no"


def stages_of(doc: Doc) -> list[Doc]:
    return list((doc.get("placement") or {}).get("stages") or [])


def predicted_ms(doc: Doc) -> str:
    return ms(((doc.get("placement") or {}).get("predicted") or {}).get("latency_ms"))


def model_ref(service: Doc) -> str:
    model = service.get("model") or {}
    resolved = model.get("resolved") or {}
    if resolved:
        choice = resolved.get("variant_choice") or {}
        if choice and choice.get("chosen") != choice.get("named"):  # an optimised variant (root/variants)
            return (f"{resolved.get('name')}:{resolved.get('version')} (variant of v{choice.get('named')}: "
                    f"{choice.get('why')}, {choice.get('speedup')}x)")
        return f"{resolved.get('name')}:{resolved.get('version')}"
    return f"{model.get('name', '-')}:{model.get('version', 'latest')}" if model else "-"


def battery(node: Doc) -> str:
    level = (node.get("telemetry") or {}).get("battery") or node.get("battery")
    if isinstance(level, dict) and level.get("percent") is not None:
        emulated = " (emu)" if level.get("emulated") else ""  # the profile's figure, not a reading
        return f"{float(level['percent']):.0f}%{' +' if level.get('charging') else ''}{emulated}"
    return "-"


def telemetry(node: Doc, key: str) -> str:
    value = (node.get("telemetry") or {}).get(key)
    return f"{float(value):.0f}" if isinstance(value, int | float) else "-"


def gpu_use(node: Doc) -> str:
    """Mean utilisation of the node's measured GPUs (``37%``), ``-`` when it reports none."""
    loads = [g["utilization_percent"] for g in (node.get("telemetry") or {}).get("gpus") or []
             if isinstance(g, dict) and isinstance(g.get("utilization_percent"), int | float)]
    return f"{sum(loads) / len(loads):.0f}%" if loads else "-"


def power(node: Doc) -> str:
    """The node's power draw (``6.6W``; ``~6.6W`` when estimated from its profile), ``-`` when unknown."""
    reading = (node.get("telemetry") or {}).get("power")
    if not isinstance(reading, dict) or not isinstance(reading.get("watts"), int | float):
        return "-"
    return f"{'~' if reading.get('estimated') else ''}{float(reading['watts']):.1f}W"


# ---------------------------------------------------------------- the kinds


@dataclass(frozen=True)
class Kind:
    """One kind of object: its names on the command line, rows, columns and name resolution."""

    name: str  # canonical plural, e.g. "services"
    aliases: tuple[str, ...]
    rows: Callable[[World], list[Doc]]
    columns: tuple[Column, ...]
    resolve: Callable[[World, str], Doc]

    @property
    def singular(self) -> str:
        return self.name.removesuffix("s")


def _resolve_node(world: World, ref: str) -> Doc:
    return resolve_one("node", ref, world.nodes, lambda n: str(n.get("node_id")),
                       lambda n: str(n.get("name")),
                       list_command="treeline get nodes")


def _resolve_cluster(world: World, ref: str) -> Doc:
    return resolve_one("cluster", ref, world.clusters, lambda c: str(c.get("cluster_id")),
                       lambda c: str(c.get("cluster_name")), list_command="treeline get clusters")


def _resolve_deployment(world: World, ref: str) -> Doc:
    rows = world.deployments()
    for row in rows:
        if ref == row.get("deployment_id"):
            return row
    service = resolve_service(ref, world.services, world.apps)
    own = [r for r in rows if r.get("service_id") == service.get("service_id")]
    if not own:
        raise Failure(f"service {service.get('microservice_name')!r} has no deployment",
                      "apply its SLA to deploy it")
    return own[-1]


def _resolve_model(world: World, ref: str) -> Doc:
    name, version = split_model_ref(ref)
    if ":" in ref:
        return world.client.model_version(name, version)
    return resolve_one("model", name, world.client.models(), lambda m: str(m.get("name")),
                       lambda m: str(m.get("name")), list_command="treeline get models")


def _no_single_event(world: World, ref: str) -> Doc:
    raise UsageError("events have no names", "use `treeline get events SERVICE` for a service's events")


KINDS: tuple[Kind, ...] = (
    Kind("nodes", ("node", "no"), lambda w: w.nodes, (
        Column("NAME", lambda n: n.get("name")),
        Column("CLUSTER", lambda n: n.get("cluster_name")),
        Column("PROFILE", lambda n: n.get("profile")),
        Column("ONLINE", lambda n: yes_no(n.get("online"))),
        Column("CPU%", lambda n: telemetry(n, "cpu_percent")),
        Column("MEM%", lambda n: telemetry(n, "memory_percent")),
        Column("BATTERY", battery),
        Column("GPU%", gpu_use),
        Column("POWER", power),
        Column("STAGES", lambda n: len((n.get("telemetry") or {}).get("stages") or [])),
        Column("SEEN", lambda n: age(n.get("last_seen"))),
        Column("ID", lambda n: n.get("node_id")),
    ), _resolve_node),
    Kind("clusters", ("cluster",), lambda w: w.clusters, (
        Column("NAME", lambda c: c.get("cluster_name")),
        Column("ACTIVE", lambda c: yes_no(c.get("active", True))),
        Column("NODES", lambda c: cluster_nodes(c)),
        Column("URL", lambda c: c.get("url")),
        Column("PUSHED", lambda c: age(c.get("last_push"))),
        Column("ID", lambda c: c.get("cluster_id")),
    ), _resolve_cluster),
    Kind("apps", ("app", "application", "applications"), lambda w: [
        {**a, "services": [s for s in w.services if s.get("application_id") == app_id(a)]} for a in w.apps
    ], (
        Column("NAME", lambda a: a.get("application_name")),
        Column("NAMESPACE", lambda a: a.get("application_namespace")),
        Column("SERVICES", lambda a: len(a.get("microservices") or [])),
        Column("STATUS", lambda a: ",".join(sorted({str(s.get("status")) for s in a.get("services") or []}))
               or "-"),
        Column("ID", app_id),
    ), lambda w, ref: resolve_app(ref, w.apps, w.services)),
    Kind("services", ("service", "svc"), lambda w: [
        {**s, "application_name": w.app_names().get(str(s.get("application_id")), "")} for s in w.services
    ], (
        Column("NAME", lambda s: s.get("microservice_name")),
        Column("APPLICATION", lambda s: s.get("application_name")),
        Column("STATUS", lambda s: s.get("status")),
        Column("MODEL", model_ref),
        Column("STAGES", lambda s: len(stages_of(s)) if s.get("placement") else "-"),
        Column("PREDICTED_MS", predicted_ms),
        Column("ID", lambda s: s.get("service_id")),
    ), lambda w, ref: resolve_service(ref, w.services, w.apps)),
    Kind("deployments", ("deployment", "deploy"), lambda w: w.deployments(), (
        Column("SERVICE", lambda d: d.get("microservice_name")),
        Column("APPLICATION", lambda d: d.get("application_name")),
        Column("STATUS", lambda d: d.get("status")),
        Column("GEN", lambda d: (d.get("placement") or {}).get("generation", "-")),
        Column("NODES", lambda d: ",".join(str(s.get("node_name") or s.get("node_id")) for s in stages_of(d))
               or "-"),
        Column("PREDICTED_MS", predicted_ms),
        Column("ID", lambda d: d.get("deployment_id")),
    ), _resolve_deployment),
    Kind("models", ("model",), lambda w: w.client.models(), (
        Column("NAME", lambda m: m.get("name")),
        Column("LATEST", lambda m: m.get("latest_version")),
        Column("ALIASES", lambda m: ",".join(f"{k}={v}" for k, v in sorted((m.get("aliases") or {}).items()))
               or "-"),
    ), _resolve_model),
    Kind("events", ("event", "ev"), lambda w: w.events(w.services), (
        Column("AGE", lambda e: age(e.get("ts"))),
        Column("SERVICE", lambda e: e.get("microservice_name")),
        Column("KIND", lambda e: e.get("kind")),
        Column("CAUSE", lambda e: clip(e.get("cause"), 48)),
        Column("DETAIL", lambda e: clip(event_detail(e), 120)),
    ), _no_single_event),
)

VERSION_COLUMNS = (
    Column("NAME", lambda v: v.get("name")),
    Column("VERSION", lambda v: v.get("version")),
    Column("SIZE", lambda v: f"{int(v.get('size') or 0) / 1024:.1f} KB"),
    Column("SHA256", lambda v: str(v.get("sha256", ""))[:12]),
    Column("ALIASES", lambda v: ",".join(v.get("aliases") or []) or "-"),
    Column("CREATED", lambda v: age(v.get("created_at"))),
    Column("DESCRIPTION", lambda v: v.get("description") or ""),
)


def cluster_nodes(cluster: Doc) -> str:
    """``online/total`` from the cluster's last push; an inactive cluster's count is stale, so it
    is shown as what it was (``? (was 2/2)``)."""
    aggregate = cluster.get("aggregate") or {}
    counted = f"{aggregate.get('active_nodes', '-')}/{aggregate.get('total_nodes', '-')}"
    return counted if cluster.get("active", True) else f"? (was {counted})"


def clip(value: Any, width: int) -> str:
    """``value`` as text of at most ``width`` characters (an ellipsis marks a cut; -o json has it all)."""
    text = "" if value is None else str(value)
    return text if len(text) <= width else text[:width - 1] + "…"


def cluster_costs(answers: Sequence[Doc]) -> list[str]:
    """Each cluster's dry-run answer in a few words: ``cluster-2 3.1 ms`` or why it has no cost."""
    return [f"{a.get('cluster_name')} {ms(a['cost'])} ms" if isinstance(a.get("cost"), int | float)
            else f"{a.get('cluster_name')} {'unschedulable' if a.get('ok') else 'no answer'}"
            for a in answers]


def event_detail(event: Doc) -> str:
    """The figures of one event in a few words (nodes, cost before -> after, duration, detail)."""
    parts = []
    if event.get("kind") == "cluster_choice":
        costs = cluster_costs(event.get("candidates") or [])
        parts.append(f"chose {event.get('chosen') or 'none'}" + (f" ({', '.join(costs)})" if costs else "")
                     + ("; a tie, decided by the clusters' aggregates" if event.get("tie") else ""))
    if event.get("kind") in ("moved", "move_failed", "failover_blocked") and event.get("message"):
        parts.append(str(event["message"]))
    if event.get("kind") == "failover_blocked" and isinstance(event.get("reasons"), dict):
        parts += [f"{path.removeprefix('clusters.')}: {reason}" for path, reason in event["reasons"].items()]
    parts += rollout_detail(event)
    parts += training_detail(event)
    if event.get("nodes"):
        parts.append("on " + ",".join(str(n) for n in event["nodes"]))
    old, new = event.get("old_cost_ms"), event.get("new_cost_ms")
    if isinstance(new, int | float):
        parts.append(f"predicted {ms(old)} -> {ms(new)} ms" if isinstance(old, int | float)
                     else f"predicted {ms(new)} ms")
    if isinstance(event.get("duration_s"), int | float):
        parts.append(f"took {float(event['duration_s']):.2f} s")
    if event.get("generation") is not None:
        parts.append(f"generation {event['generation']}")
    if event.get("detail"):
        parts.append(str(event["detail"]))
    return "; ".join(parts)


def training_detail(event: Doc) -> list[str]:
    """A training event's text (``cluster_orchestrator.training_job``): a round's accuracy, loss and
    clients; otherwise its message (placement, server start, a lost client, the registered model)."""
    kind = str(event.get("kind") or "")
    if not kind.startswith("training_"):
        return []
    if kind == "training_round":
        clients = event.get("clients")
        start = event.get("round") == 0  # the starting model, evaluated before any client trained
        figures = ["round 0 (starting model)" if start else f"round {event.get('round')}"]
        for key in ("accuracy", "loss"):
            if isinstance(event.get(key), int | float):
                figures.append(f"{key} {float(event[key]):.3f}")
        if isinstance(clients, int) and not start:
            figures.append(f"{clients} client(s)")
        if isinstance(event.get("epsilon"), int | float):
            figures.append(f"epsilon {float(event['epsilon']):.2f}")
        return [", ".join(figures)]
    return [str(event["message"])] if event.get("message") else []


def rollout_detail(event: Doc) -> list[str]:
    """The key figures of a rollout event (``cluster_orchestrator.rollout_runner``): the verdict and
    its reason, the canary's share, answered requests, latency and disagreement, how long it took."""
    kind = event.get("kind")
    parts: list[str] = []
    if kind == "rollout_started" and event.get("new_generation") is not None:
        parts.append(f"generation {event.get('old_generation')} -> {event['new_generation']} "
                     f"({event.get('strategy') or 'canary'})")
    if kind == "canary_share" and isinstance(event.get("share"), int | float):
        parts.append(f"{float(event['share']):.0%} of requests via {event.get('node') or '?'}")
    if kind == "rollout_requested" and isinstance(event.get("model"), dict):
        parts.append(f"model {event['model'].get('name')} v{event['model'].get('version')}")
    if kind == "rollout_check" and event.get("verdict"):
        parts.append(str(event["verdict"]))
    if kind in ("rollout_check", "promoted", "rolled_back") and event.get("reason"):
        parts.append(str(event["reason"]))
    figures = event.get("figures") if kind in ("rollout_check", "promoted", "rolled_back") else None
    if isinstance(figures, dict):
        parts.append(f"live {figures.get('live_requests', 0)}, probe {figures.get('probe_requests', 0)}")
        if isinstance(figures.get("latency_ms"), int | float):
            parts.append(f"latency {ms(figures['latency_ms'])} ms")
        if isinstance(figures.get("disagreement"), int | float):
            parts.append(f"disagreement {float(figures['disagreement']):.0%}")
    for key, words in (("canary_s", "canary"), ("rollback_s", "rollback")):
        if kind in ("promoted", "rolled_back") and isinstance(event.get(key), int | float):
            parts.append(f"{words} {float(event[key]):.1f} s")
    return parts


def kind_named(word: str) -> Kind:
    """The kind for ``nodes``, ``node``, ``svc``, ...; a UsageError lists the kinds there are."""
    for kind in KINDS:
        if word == kind.name or word in kind.aliases:
            return kind
    raise UsageError(f"unknown kind {word!r}", f"use one of: {', '.join(k.name for k in KINDS)}")
