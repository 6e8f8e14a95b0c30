"""Cluster ranking: a coarse, pure filter-and-sort over the clusters' pushed aggregates.

The root only decides *which cluster* gets a job; the cluster's own ML scheduler decides
placement. A cluster is active when it pushed (or registered) within ``active_window_s``;
active clusters are ordered by active nodes, then free memory (more first), then name for a
deterministic order. The caller walks the list and falls back to the next cluster on failure.

Aggregate keys read (the first present): ``active_nodes`` | ``online_nodes``;
``memory`` (available MB summed over online nodes, as ``cluster_orchestrator.aggregate`` sends it)
| ``free_memory_mb``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

DEFAULT_ACTIVE_WINDOW_S = 30.0

_NODE_KEYS = ("active_nodes", "online_nodes")
_MEMORY_KEYS = ("memory", "free_memory_mb")


def last_seen(cluster: Mapping[str, Any]) -> float:
    return max(float(cluster.get("registered_at") or 0.0), float(cluster.get("last_push") or 0.0))


def is_active(cluster: Mapping[str, Any], now: float, window_s: float = DEFAULT_ACTIVE_WINDOW_S) -> bool:
    return now - last_seen(cluster) <= window_s


def _first_number(aggregate: Mapping[str, Any], keys: tuple[str, ...]) -> float:
    for key in keys:
        value = aggregate.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    return 0.0


def rank_clusters(clusters: Iterable[Mapping[str, Any]], now: float,
                  window_s: float = DEFAULT_ACTIVE_WINDOW_S) -> list[dict[str, Any]]:
    """Active clusters, best first. A cluster that never pushed an aggregate ranks after those
    reporting nodes, but is still tried (it may have just registered)."""
    active = [dict(c) for c in clusters if is_active(c, now, window_s)]

    def key(c: Mapping[str, Any]) -> tuple[float, float, str]:
        aggregate = c.get("aggregate") or {}
        return (-_first_number(aggregate, _NODE_KEYS), -_first_number(aggregate, _MEMORY_KEYS),
                str(c.get("cluster_name", "")))

    return sorted(active, key=key)
