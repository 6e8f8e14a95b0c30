"""What the operator web UI shows, shaped from the root's documents and the clusters' answers.

Pure functions over plain documents (no Flask, no I/O): :mod:`root_orchestrator.api.ui` fetches
and passes them in. The UI polls ``GET /api/ui/overview`` every period (default 2 s), so these
views are compact: a node row is ~0.5 KB where the cluster's full node document with telemetry
is ~3 KB; with 100 nodes and 20 deployments one overview is ~70 KB.

Figures keep their units in their names (``_percent``, ``_mb``, ``_w``, ``_ms``, ``_mbps``); a
figure the device does not report is None (shown as "–"), never 0, as in the node's telemetry
(:class:`treeline_common.messages.NodeTelemetry`). ``emulated`` lists which readings an
emulation profile made up (its ``sources`` marked ``emulated``, and an emulated battery), so the
UI can mark them.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

Doc = Mapping[str, Any]

def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _rounded(value: Any, digits: int = 1) -> float | None:
    number = _number(value)
    return None if number is None else round(number, digits)


def node_row(node: Doc, cluster: Doc, now: float, reachable: bool = True) -> dict[str, Any]:
    """One node for the fleet table: identity, state and its latest readings.

    ``state``: ``online`` | ``offline`` (the cluster says so) | ``unknown`` (its cluster cannot
    be asked: the row is what it answered last). The readings of a node that is not online are
    its last ones (the UI greys them). ``telemetry_age_s``: seconds since the cluster last heard
    the node (None: never). ``links``: the newest measurement per peer ``[{peer, rtt_ms, mbps,
    source}]`` (empty: none measured).
    """
    t: Doc = node.get("telemetry") or {}
    sources: Doc = t.get("sources") or {}
    battery: Doc = t.get("battery") or node.get("battery") or {}
    emulated = sorted(name for name, state in sources.items() if state == "emulated")
    if battery.get("emulated") and "battery" not in emulated:
        emulated.append("battery")
    gpus = [g for g in t.get("gpus") or [] if isinstance(g, Mapping)]
    gpu_util = [u for u in (_number(g.get("utilization_percent")) for g in gpus) if u is not None]
    accelerators = [a for a in t.get("accelerators") or node.get("accelerators") or []
                    if isinstance(a, Mapping)]
    temps: Doc = t.get("temperatures_c") or {}
    hottest = max((v for v in (_number(x) for x in temps.values()) if v is not None), default=None)
    for gpu in gpus:
        temp = _number(gpu.get("temperature_c"))
        if temp is not None and (hottest is None or temp > hottest):
            hottest = temp
    power: Doc = t.get("power") or {}
    last_seen = _number(node.get("last_seen"))
    return {
        "node_id": node.get("node_id"), "name": node.get("name"),
        "cluster_id": cluster.get("cluster_id"), "cluster_name": cluster.get("cluster_name"),
        "profile": node.get("profile"), "arch": node.get("arch"),
        "online": bool(node.get("online")) and reachable,
        "state": ("online" if node.get("online") else "offline") if reachable else "unknown",
        "emulated": bool(node.get("emulated")), "emulated_readings": emulated,
        "cpu_percent": _rounded(t.get("cpu_percent")), "cpu_count": node.get("cpu_count"),
        "memory_percent": _rounded(t.get("memory_percent")),
        "memory_limit_mb": node.get("memory_limit_mb") or t.get("memory_limit_mb"),
        "gpu": ", ".join(str(g.get("name")) for g in gpus) or ", ".join(
            f"{a.get('name')}" for a in accelerators) or None,
        "gpu_percent": round(max(gpu_util), 1) if gpu_util else None,
        "battery_percent": _rounded(battery.get("percent")), "charging": battery.get("charging"),
        "temperature_c": None if hottest is None else round(hottest, 1),
        "power_w": _rounded(power.get("watts"), 2), "power_estimated": bool(power.get("estimated")),
        "links": _newest_links(t.get("links") or []),
        "stages": len(t.get("stages") or []),
        "telemetry_age_s": None if last_seen is None else round(max(0.0, now - last_seen), 1),
    }


def _newest_links(links: Iterable[Any]) -> list[dict[str, Any]]:
    """One link per peer: the newest measurement (a node reports probe and passive figures)."""
    newest: dict[str, Doc] = {}
    for link in links:
        if not isinstance(link, Mapping):
            continue
        peer = str(link.get("peer"))
        known = newest.get(peer)
        at = _number(link.get("measured_at")) or 0.0
        if known is None or at > (_number(known.get("measured_at")) or 0.0):
            newest[peer] = link
    return [{"peer": peer, "rtt_ms": _rounded(link.get("rtt_ms"), 2), "mbps": _rounded(link.get("mbps"), 1),
             "source": link.get("source")} for peer, link in sorted(newest.items())]


def plain_problem(message: str) -> str:
    """A connection error in plain words (``connection refused``, ``timed out``), else the message
    cut to one line of at most 160 characters."""
    lowered = message.lower()
    for needle, plain in (("connection refused", "not reachable (connection refused)"),
                          ("errno 111", "not reachable (connection refused)"),
                          ("timed out", "not reachable (timed out)"),
                          ("timeout", "not reachable (timed out)"),
                          ("name or service not known", "not reachable (unknown host)"),
                          ("no route to host", "not reachable (no route to host)")):
        if needle in lowered:
            return plain
    line = message.splitlines()[0] if message else "unknown error"
    return line if len(line) <= 160 else line[:157] + "..."


def silent_for(cluster: Doc, now: float) -> str:
    """Why a cluster is inactive: how long it has not pushed."""
    last = _number(cluster.get("last_push")) or _number(cluster.get("registered_at"))
    return "inactive: never pushed" if last is None else f"inactive: no push for {max(0.0, now - last):.0f} s"


def cluster_row(cluster: Doc, active: bool, problem: str | None) -> dict[str, Any]:
    """One cluster: name, state, its pushed aggregate's counts and why its nodes are missing."""
    aggregate: Doc = cluster.get("aggregate") or {}
    return {"cluster_id": cluster.get("cluster_id"), "cluster_name": cluster.get("cluster_name"),
            "url": cluster.get("url"), "active": active,
            "active_nodes": aggregate.get("active_nodes"), "total_nodes": aggregate.get("total_nodes"),
            "last_push": cluster.get("last_push"),
            "problem": problem}


def service_row(service: Doc, application_names: Mapping[str, str]) -> dict[str, Any]:
    """One deployment in the list: its status, model, where its stages run, predicted figures."""
    placement: Doc = service.get("placement") or {}
    stages = [s for s in placement.get("stages") or [] if isinstance(s, Mapping)]
    predicted: Doc = placement.get("predicted") or {}
    model: Doc = service.get("model") or {}
    resolved: Doc = model.get("resolved") or {}
    events = _events(service)
    return {
        "service_id": service.get("service_id"), "name": service.get("microservice_name"),
        "application_id": service.get("application_id"),
        "application": application_names.get(str(service.get("application_id")), ""),
        "status": service.get("status"), "status_detail": service.get("status_detail") or "",
        "cluster_id": service.get("cluster_id"),
        "model": _model_label(service, model, resolved),
        "stages": len(stages), "nodes": [s.get("node_name") or s.get("node_id") for s in stages],
        "predicted_latency_ms": _rounded(predicted.get("latency_ms"), 2),
        "predicted_throughput_rps": _rounded(predicted.get("throughput_rps"), 1),
        "events": len(events), "last_event": events[-1] if events else None,
    }


def _model_label(service: Doc, model: Doc, resolved: Doc) -> str:
    """``name vN`` of what a deployment serves; a training service's starting version (its SLA
    names it in ``training.model``, so the service's ``model`` holds only ``resolved``)."""
    name = model.get("name") or resolved.get("name") or "?"
    label = f"{name} v{resolved.get('version', model.get('version', '?'))}"
    return f"trains from {label}" if service.get("virtualization") == "ml-training" else label


def _events(service: Doc) -> list[Doc]:
    found: list[Doc] = []
    for instance in service.get("instances") or []:
        found.extend(e for e in (instance.get("events") or []) if isinstance(e, Mapping))
    return sorted(found, key=lambda e: _number(e.get("ts")) or 0.0)


def strip(service: Doc, version: Doc | None) -> dict[str, Any]:
    """The placement strip: the model's operators ``[0, total_ops)`` cut into stages, each stage
    with its operator range, node, cut tensors (names and bytes) and predicted figures.

    Operator ranges come from the scheduler's plan (``explanation.plan.stages[].start/end``, in
    the planner's topological order) and, failing that, the registry's recorded partitions.
    A stage's ``cut_bytes`` are the bytes of its ``outputs`` sent to the next stage (0 for the last).
    ``links``: the link each cut crosses, with the sending node's measured figures when it
    reports them (``measured`` False: the planner's declared figures were used).
    """
    placement: Doc = service.get("placement") or {}
    stages = [s for s in placement.get("stages") or [] if isinstance(s, Mapping)]
    explanation: Doc = service.get("explanation") or {}
    planned_stages = (explanation.get("plan") or {}).get("stages") or []
    plan_stages = {int(s.get("index", i)): s for i, s in enumerate(planned_stages) if isinstance(s, Mapping)}
    recorded = {str(p.get("sha256")): p for p in (version or {}).get("partitions") or []
                if isinstance(p, Mapping)}
    rows: list[dict[str, Any]] = []
    for stage in stages:
        index = int(stage.get("index", len(rows)))
        planned: Doc = plan_stages.get(index) or {}
        ops = _op_range(planned, recorded.get(str(stage.get("sha256"))))
        rows.append({
            "index": index, "node_id": stage.get("node_id"), "node_name": stage.get("node_name"),
            "profile": stage.get("profile"), "state": stage.get("state"), "relay": not stage.get("sha256"),
            "start": ops[0], "end": ops[1], "inputs": list(stage.get("inputs") or []),
            "outputs": list(stage.get("outputs") or []),
            "cut_bytes": stage.get("cut_bytes"), "flops": stage.get("flops"),
            "predicted_compute_ms": _rounded(stage.get("predicted_compute_ms"), 3),
            "predicted_transfer_in_ms": _rounded(stage.get("predicted_transfer_in_ms"), 3),
            "memory_bytes": planned.get("memory_bytes"), "energy_mj": _rounded(planned.get("energy_mj"), 2),
        })
    total = max((r["end"] for r in rows if r["end"] is not None), default=0)
    return {"total_ops": total, "stages": rows, "strategy": placement.get("strategy"),
            "generation": placement.get("generation"), "predicted": placement.get("predicted") or {}}


def _op_range(planned: Doc, recorded: Doc | None) -> tuple[int | None, int | None]:
    if isinstance(planned.get("start"), int) and isinstance(planned.get("end"), int):
        return int(planned["start"]), int(planned["end"])
    ops = (recorded or {}).get("ops")
    if isinstance(ops, Sequence) and len(ops) == 2 and all(isinstance(x, int) for x in ops):
        return int(ops[0]), int(ops[1])
    return None, None


def links_of(stages: Sequence[Doc], nodes: Iterable[Doc]) -> list[dict[str, Any]]:
    """For each cut between consecutive stages on different nodes: the link's measured figures
    as the sending node reports them (``measured`` False and None figures where it does not)."""
    by_id = {str(n.get("node_id")): n for n in nodes}
    found = []
    for before, after in itertools.pairwise(stages):
        if before.get("node_id") == after.get("node_id"):
            continue
        sender: Doc = by_id.get(str(before.get("node_id"))) or {}
        reading = next((link for link in sender.get("links") or []
                        if link.get("peer") == after.get("node_id")), None)
        found.append({"from": before.get("node_name") or before.get("node_id"),
                      "to": after.get("node_name") or after.get("node_id"),
                      "cut_bytes": before.get("cut_bytes"), "measured": reading is not None,
                      "mbps": (reading or {}).get("mbps"), "rtt_ms": (reading or {}).get("rtt_ms")})
    return found


def measured_view(stages: Sequence[Doc], measured: Sequence[Doc], nodes: Iterable[Doc]) -> dict[str, Any]:
    """Predicted against measured, per stage and end to end, plus energy per inference.

    ``measured``: the cluster's per-stage reports (``compute_ms_window``: the mean over the
    requests of the last report window, else ``compute_ms_mean`` since the stage started).
    Energy per inference (mJ) is the stage's node power (W) times its measured compute ms,
    summed over stages; it says ``estimated`` where the node's power is itself estimated.
    ``e2e_requests``/``e2e_ms_mean``: requests the entry answered and their mean end-to-end ms
    since it started (links and waits included), as the entry reports them.
    """
    by_stage = {int(m.get("stage", -1)): m for m in measured}
    power = {str(n.get("node_id")): n for n in nodes}
    rows, total, energy, complete, estimated = [], 0.0, 0.0, bool(stages), False
    for stage in stages:
        report: Doc = by_stage.get(int(stage.get("index", -1))) or {}
        value = _number(report.get("compute_ms_window"))
        if value is None and int(report.get("requests") or 0) > 0:  # no request served: no figure, not 0
            value = _number(report.get("compute_ms_mean"))
        node: Doc = power.get(str(stage.get("node_id"))) or {}
        watts = _number(node.get("power_w"))
        rows.append({"index": stage.get("index"), "node_name": stage.get("node_name"),
                     "predicted_ms": stage.get("predicted_compute_ms"), "measured_ms": _rounded(value, 3),
                     "requests": report.get("requests", 0)})
        if value is None or watts is None:
            complete = False
            continue
        total += value
        energy += watts * value  # W * ms = mJ
        estimated = estimated or bool(node.get("power_estimated"))
    entry = max(measured, key=lambda m: int(m.get("e2e_requests") or 0), default={})
    answered = int(entry.get("e2e_requests") or 0)
    return {"stages": rows, "compute_ms": round(total, 3) if complete else None,
            "energy_mj": round(energy, 2) if complete else None, "energy_estimated": estimated,
            "requests": int(rows[0]["requests"] or 0) if rows else 0,  # requests entering: stage 0's
            "e2e_requests": answered,
            "e2e_ms_mean": _rounded(entry.get("e2e_ms_mean"), 3) if answered else None}
