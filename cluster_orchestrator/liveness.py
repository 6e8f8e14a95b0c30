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


# Departures (nodes flipping offline) and the re-plans they cause: see DepartureHold.
DEPARTURE_DEBOUNCE = 0.2  # s after any departure before re-plans start (the failure may be spreading)
MASS_DEPARTURE_SETTLE = 1.0  # s without a new departure that ends a mass departure
MASS_DEPARTURE_MIN = 5  # departures in one burst that make it a mass departure whatever the cluster size
MAX_DEPARTURE_HOLD = 10.0  # s: a trickle of departures never holds re-plans longer than this


def is_mass_departure(departed: int, online_before: int) -> bool:
    """Whether ``departed`` nodes of ``online_before`` leaving in one burst is a mass departure:
    at least :data:`MASS_DEPARTURE_MIN`, or at least two and more than half (the mass-silence rule)."""
    return departed >= MASS_DEPARTURE_MIN or (departed >= 2 and departed * 2 > online_before)


class DepartureHold:
    """When re-plans may start after nodes went offline (pure: the caller passes ``now``).

    Why: a broker-side crash of many nodes (a simulator, a rack, a power cut) arrives as a burst
    of last wills within about a second. Re-planning after the first will would place
    deployments on nodes whose wills are still on their way, fail, and re-plan again: a storm.
    So every departure holds re-plans for :data:`DEPARTURE_DEBOUNCE`; a burst that turns out
    to be a mass departure (:func:`is_mass_departure`) holds them until no node has left for
    :data:`MASS_DEPARTURE_SETTLE`; no burst holds them longer than :data:`MAX_DEPARTURE_HOLD`
    from its first departure. The nodes are marked offline at once all the same; only the
    decision about what to do with their deployments waits for the state to settle, and is
    then taken once, on the final state. Not thread-safe (the node registry's lock guards it).
    """

    def __init__(self, debounce: float = DEPARTURE_DEBOUNCE, settle: float = MASS_DEPARTURE_SETTLE,
                 max_hold: float = MAX_DEPARTURE_HOLD) -> None:
        self._debounce = debounce
        self._settle = settle
        self._max_hold = max_hold
        self._first: float | None = None  # first departure of the current burst
        self._last = float("-inf")
        self._count = 0
        self._online_before = 0

    def departed(self, now: float, online_before: int) -> None:
        """One node went offline at ``now``; ``online_before`` were online just before it."""
        if self._first is None or now - self._last > max(self._settle, self._debounce):
            self._first, self._count, self._online_before = now, 0, online_before
        self._count += 1
        self._last = now

    @property
    def mass(self) -> bool:
        """Whether the current (or last) burst is a mass departure."""
        return is_mass_departure(self._count, self._online_before)

    def held_until(self, now: float) -> float | None:
        """When re-plans may start, or None when they may start now."""
        if self._first is None:
            return None
        until = self._last + (self._settle if self.mass else self._debounce)
        until = min(until, self._first + self._max_hold)
        return until if now < until else None
