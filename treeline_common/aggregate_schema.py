"""What a cluster's aggregate may hold: the fields the root chooses clusters on, checked on decode.

A cluster pushes its aggregate (``cluster_orchestrator.aggregate.compute_aggregate``) inside a
:class:`~treeline_common.jobs.ClusterPush`; the root filters and orders clusters on it
(``root_orchestrator.cluster_filter``), so a wrong type or range must be refused with the field
named, never stored. Known fields are checked; unknown ones are kept (a newer cluster may send
more). Every field is optional (an empty aggregate is a cluster that has not counted yet).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

COUNTS = ("active_nodes", "online_nodes", "total_nodes", "vcpus", "gpus", "accelerators")
AMOUNTS = ("memory", "memory_total_free_mb", "memory_largest_free_mb", "max_memory_limit_mb",
           "free_memory_mb", "best_speed_factor")
PERCENTS = ("cpu_percent", "memory_percent")
HISTOGRAMS = ("architectures", "accelerator_kinds", "device_classes", "profiles")


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def aggregate_problems(aggregate: Mapping[str, Any], prefix: str = "aggregate") -> list[dict[str, str]]:
    """``[{path, message}]`` for every known field of ``aggregate`` with a wrong type or range."""
    problems: list[dict[str, str]] = []

    def bad(key: str, message: str) -> None:
        problems.append({"path": f"{prefix}.{key}", "message": message})

    for key in COUNTS:
        value = aggregate.get(key)
        if value is not None and not (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
            bad(key, "must be a non-negative integer")
    for key in AMOUNTS:
        value = aggregate.get(key)
        if value is not None and not (_number(value) and value >= 0):
            bad(key, "must be a non-negative number")
    for key in PERCENTS:
        value = aggregate.get(key)
        if value is not None and not (_number(value) and 0 <= value <= 100):
            bad(key, "must be a number from 0 to 100")
    share = aggregate.get("battery_share")
    if share is not None and not (_number(share) and 0 <= share <= 1):
        bad("battery_share", "must be a number from 0 to 1")
    best = aggregate.get("best_device_class")
    if best is not None and not isinstance(best, str):
        bad("best_device_class", "must be a string or null")
    for key in HISTOGRAMS:
        value = aggregate.get(key)
        if value is None:
            continue
        if not isinstance(value, Mapping):
            bad(key, "must be an object of counts ({name: count})")
            continue
        for name, count in value.items():
            if not (isinstance(count, int) and not isinstance(count, bool) and count >= 0):
                bad(f"{key}.{name}", "must be a non-negative integer")
    links = aggregate.get("links")
    if links is not None:
        if not isinstance(links, Mapping):
            bad("links", "must be an object")
        else:
            for key in ("uplink_mbps_median", "rtt_ms_median", "measured_nodes"):
                value = links.get(key)
                if value is not None and not (_number(value) and value >= 0):
                    bad(f"links.{key}", "must be a non-negative number or null")
    return problems
