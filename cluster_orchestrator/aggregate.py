"""The cluster's aggregate as pushed to the root (Oakestra's cluster information fields).

The root ranks clusters on these numbers only, so they summarise the online nodes'
latest telemetry (falling back to what a node declared at registration). Pure: it takes
node documents and the liveness verdicts and returns a JSON-able dict.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any


def _accelerator_kinds(node: Mapping[str, Any]) -> list[str]:
    telemetry = node.get("telemetry") or {}
    accelerators = telemetry.get("accelerators") or node.get("accelerators") or []
    kinds = []
    for acc in accelerators:
        kinds.append(str(acc.get("kind", "")) if isinstance(acc, Mapping) else str(acc))
    return kinds


def compute_aggregate(nodes: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Aggregate over the nodes whose ``online`` flag is set.

    ``cpu_percent`` and ``memory_percent`` are means, ``memory`` is the sum of available MB
    (capped by each node's memory limit), ``vcpus`` the sum of cores; ``gpus`` counts GPU
    accelerators and ``accelerators`` all of them (emulated ones included: telemetry says so).
    """
    all_nodes = list(nodes)
    online = [n for n in all_nodes if n.get("online")]
    cpu: list[float] = []
    mem_pct: list[float] = []
    memory = 0
    vcpus = 0
    gpus = 0
    accelerators = 0
    profiles: dict[str, int] = {}
    max_memory_limit = 0
    for node in online:
        t = node.get("telemetry") or {}
        if "cpu_percent" in t:
            cpu.append(float(t["cpu_percent"]))
        if "memory_percent" in t:
            mem_pct.append(float(t["memory_percent"]))
        limit = int(t.get("memory_limit_mb") or node.get("memory_limit_mb") or 0)
        available = t.get("memory_available_mb")
        memory += min(int(available), limit) if available is not None and limit else (
            int(available) if available is not None else limit)
        max_memory_limit = max(max_memory_limit, limit)
        vcpus += int(t.get("cpu_count") or node.get("cpu_count") or 0)
        kinds = _accelerator_kinds(node)
        gpus += sum(1 for k in kinds if k == "gpu")
        accelerators += len(kinds)
        profile = str(node.get("profile") or "native")
        profiles[profile] = profiles.get(profile, 0) + 1
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
    }
