"""The cluster's aggregate as pushed to the root (Oakestra's cluster information fields + Treeline's).

The root chooses a cluster on these numbers only (:mod:`root_orchestrator.cluster_filter`),
then asks the best few for a dry-run plan, so they summarise exactly what an ML placement
needs to know before asking: how many nodes of which CPU architecture and accelerator, how much
memory is free in total (what a *split* model needs) and on the largest node (what an unsplit
one needs), the fastest device class, how many nodes run on battery, and the link figures
(measured where nodes report them, declared otherwise). Pure: it takes node documents and
returns a JSON-able dict; :func:`significant_change` decides when a change is worth an
immediate push instead of waiting for the next periodic one.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping
from typing import Any

# An immediate push when the online node count changes, or free memory (total or largest) moves
# by more than this share, or an architecture/accelerator/device class appears or disappears.
MEMORY_CHANGE_SHARE = 0.2


def _accelerator_kinds(node: Mapping[str, Any]) -> list[str]:
    telemetry = node.get("telemetry") or {}
    accelerators = telemetry.get("accelerators") or node.get("accelerators") or []
    kinds = []
    for acc in accelerators:
        kinds.append(str(acc.get("kind", "")) if isinstance(acc, Mapping) else str(acc))
    return [k for k in kinds if k]


def _free_memory_mb(node: Mapping[str, Any], telemetry: Mapping[str, Any]) -> int:
    """What the node can still give a stage: host-available memory capped by what it offers."""
    limit = int(telemetry.get("memory_limit_mb") or node.get("memory_limit_mb") or 0)
    available = telemetry.get("memory_available_mb")
    if available is None:
        return limit
    return min(int(available), limit) if limit else int(available)


def _on_battery(node: Mapping[str, Any], telemetry: Mapping[str, Any]) -> bool:
    battery = telemetry.get("battery") if "battery" in telemetry else node.get("battery")
    return isinstance(battery, Mapping) and battery.get("percent") is not None


def _link_figures(node: Mapping[str, Any],
                  telemetry: Mapping[str, Any]) -> tuple[float | None, float | None, bool]:
    """(uplink Mbit/s, RTT ms, measured?) of one node: the median of its measured links when its
    telemetry carries ``links`` (``[{peer, rtt_ms, mbps}]``), else what it declared."""
    links = telemetry.get("links")
    if isinstance(links, list):
        mbps = [float(x["mbps"]) for x in links
                if isinstance(x, Mapping) and isinstance(x.get("mbps"), int | float)]
        rtt = [float(x["rtt_ms"]) for x in links
               if isinstance(x, Mapping) and isinstance(x.get("rtt_ms"), int | float)]
        if mbps or rtt:
            return (statistics.median(mbps) if mbps else None, statistics.median(rtt) if rtt else None, True)
    up, rtt_ms = node.get("uplink_mbps"), node.get("link_rtt_ms")
    return (float(up) if up is not None else None, float(rtt_ms) if rtt_ms is not None else None, False)


def _count(counts: dict[str, int], key: str) -> None:
    counts[key] = counts.get(key, 0) + 1


def compute_aggregate(nodes: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Aggregate over the nodes whose ``online`` flag is set.

    Oakestra's fields: ``cpu_percent`` and ``memory_percent`` are means, ``memory`` is the sum
    of free MB (host-available capped by each node's offer), ``vcpus`` the sum of cores,
    ``gpus`` counts GPU accelerators and ``accelerators`` all of them (emulated ones included:
    telemetry says so). Treeline's: ``memory_total_free_mb`` (= ``memory``),
    ``memory_largest_free_mb`` (the best single node), ``architectures`` and
    ``accelerator_kinds`` (counts of online nodes by CPU architecture / accelerator kind),
    ``device_classes`` (counts), ``best_device_class`` (the class of the fastest online node by
    speed factor, ties by name), ``battery_share`` (0..1 of online nodes reporting a battery),
    ``links`` (``uplink_mbps_median``, ``rtt_ms_median``, ``measured_nodes``: nodes whose figures
    were measured rather than declared).
    """
    all_nodes = list(nodes)
    online = [n for n in all_nodes if n.get("online")]
    cpu: list[float] = []
    mem_pct: list[float] = []
    memory = largest = vcpus = gpus = accelerators = 0
    max_memory_limit = 0
    profiles: dict[str, int] = {}
    architectures: dict[str, int] = {}
    accelerator_kinds: dict[str, int] = {}
    device_classes: dict[str, int] = {}
    best: tuple[float, str] | None = None
    on_battery = measured = 0
    uplinks: list[float] = []
    rtts: list[float] = []
    for node in online:
        t = node.get("telemetry") or {}
        if "cpu_percent" in t:
            cpu.append(float(t["cpu_percent"]))
        if "memory_percent" in t:
            mem_pct.append(float(t["memory_percent"]))
        free = _free_memory_mb(node, t)
        memory += free
        largest = max(largest, free)
        limit = int(t.get("memory_limit_mb") or node.get("memory_limit_mb") or 0)
        max_memory_limit = max(max_memory_limit, limit)
        vcpus += int(t.get("cpu_count") or node.get("cpu_count") or 0)
        kinds = _accelerator_kinds(node)
        gpus += sum(1 for k in kinds if k == "gpu")
        accelerators += len(kinds)
        for kind in set(kinds):
            _count(accelerator_kinds, kind)
        _count(profiles, str(node.get("profile") or "native"))
        _count(architectures, str(node.get("arch") or "x86_64"))
        device_class = str(node.get("device_class") or node.get("profile") or "native")
        _count(device_classes, device_class)
        speed = float(t.get("speed_factor") or node.get("speed_factor") or 1.0)
        if best is None or (-speed, device_class) < (-best[0], best[1]):
            best = (speed, device_class)
        on_battery += _on_battery(node, t)
        up, rtt, was_measured = _link_figures(node, t)
        measured += was_measured
        if up is not None:
            uplinks.append(up)
        if rtt is not None:
            rtts.append(rtt)
    return {
        "cpu_percent": round(sum(cpu) / len(cpu), 2) if cpu else 0.0,
        "memory": memory,
        "memory_percent": round(sum(mem_pct) / len(mem_pct), 2) if mem_pct else 0.0,
        "vcpus": vcpus,
        "active_nodes": len(online),
        "total_nodes": len(all_nodes),
        "gpus": gpus,
        "accelerators": accelerators,
        "max_memory_limit_mb": max_memory_limit,
        "profiles": profiles,
        "memory_total_free_mb": memory,
        "memory_largest_free_mb": largest,
        "architectures": architectures,
        "accelerator_kinds": accelerator_kinds,
        "device_classes": device_classes,
        "best_device_class": best[1] if best else None,
        "best_speed_factor": best[0] if best else None,
        "battery_share": round(on_battery / len(online), 4) if online else 0.0,
        "links": {"uplink_mbps_median": statistics.median(uplinks) if uplinks else None,
                  "rtt_ms_median": statistics.median(rtts) if rtts else None,
                  "measured_nodes": measured},
    }


def _moved(old: float, new: float) -> bool:
    return abs(new - old) > MEMORY_CHANGE_SHARE * max(abs(old), 1.0)


def significant_change(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> bool:
    """Whether ``new`` differs from the last pushed ``old`` enough to push at once: another
    online node count, total or largest free memory moved by more than
    :data:`MEMORY_CHANGE_SHARE`, or another set of architectures, accelerator kinds or device
    classes, or another best device class. True when nothing was pushed yet."""
    if old is None:
        return True
    if old.get("active_nodes") != new.get("active_nodes"):
        return True
    for key in ("memory_total_free_mb", "memory_largest_free_mb"):
        if _moved(float(old.get(key) or 0), float(new.get(key) or 0)):
            return True
    for key in ("architectures", "accelerator_kinds", "device_classes"):
        if set(old.get(key) or {}) != set(new.get(key) or {}):
            return True
    return old.get("best_device_class") != new.get("best_device_class")
