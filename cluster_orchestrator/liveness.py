"""Node liveness and retry backoff as pure functions of ``now``.

Why pure: the liveness rules (last will, missed heartbeats, stale retained statuses) are
the part of failure detection that is easy to get subtly wrong, so they take the node
document and the time and return a verdict, and tests drive them with a FakeClock.

A node document carries, besides its registration:
- ``last_seen``: when the cluster last heard a birth or telemetry from it (cluster clock);
- ``status_state`` / ``status_seq``: the latest accepted ``nodes/<id>/status`` payload.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from treeline_common.messages import NodeStatus


def heartbeat_timeout(telemetry_interval: float, misses: int) -> float:
    """Seconds of silence after which a node counts as offline (N missed heartbeats)."""
    return max(telemetry_interval, 0.0) * max(misses, 1)


def is_online(node: Mapping[str, Any], now: float, timeout: float) -> bool:
    """True when the node has been heard from within ``timeout`` and has not sent its last will.

    An accepted ``offline`` status wins over fresh telemetry: only a newer birth (or a
    re-registration) brings the node back, so a straggling telemetry message published
    just before a crash cannot resurrect it.
    """
    if node.get("status_state") == "offline":
        return False
    last_seen = node.get("last_seen")
    if last_seen is None:
        return False
    return now - float(last_seen) <= timeout


def accepts_status(node: Mapping[str, Any], status: NodeStatus) -> bool:
    """Whether a status payload is news rather than a stale retained message.

    Statuses stamped before the node's (re-)registration belong to an earlier life of the
    node; within one life a lower ``seq`` than the one already seen is stale. An
    ``offline`` with the same ``seq`` as the accepted birth is that birth's last will.
    """
    registered_at = float(node.get("registered_at") or 0.0)
    if status.ts and status.ts < registered_at:
        return False
    seen_seq = node.get("status_seq")
    if seen_seq is None:
        return True
    if status.seq < int(seen_seq):
        return False
    # the will of this birth already arrived; a replayed birth must not undo it
    return not (status.seq == int(seen_seq) and status.state == "online"
                and node.get("status_state") == "offline")


def backoff_delay(attempt: int, base: float = 0.5, cap: float = 10.0) -> float:
    """Exponential backoff for ``attempt`` (0-based), capped; deterministic (no jitter needed here)."""
    return min(cap, base * (2 ** max(attempt, 0)))
