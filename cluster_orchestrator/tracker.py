"""Waiting for a generation's stages: node reports in, one waiting deployer out.

Node reports (``StageState``, MQTT thread) are fed into :class:`StageTracker`; the deployer
worker blocks on its condition with a deadline taken from the injected clock. A node that
goes offline fails its pending stages at once instead of at the deadline.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, field

from treeline_common.clock import Clock, SystemClock
from treeline_common.messages import StageState


@dataclass
class _Expectation:
    generation: int
    node_of: dict[int, str]
    states: dict[int, str] = field(default_factory=dict)
    reasons: dict[int, str] = field(default_factory=dict)


class StageTracker:
    """What each deployment's current generation is waiting for, fed by node reports."""

    def __init__(self, clock: Clock | None = None) -> None:
        self._clock = clock or SystemClock()
        self._cond = threading.Condition()
        self._expected: dict[str, _Expectation] = {}

    def expect(self, deployment_id: str, generation: int, node_of: Mapping[int, str]) -> None:
        """Start tracking ``generation`` (replacing any older one) before commands go out."""
        with self._cond:
            self._expected[deployment_id] = _Expectation(generation, dict(node_of))
            self._cond.notify_all()

    def report(self, node_id: str, state: StageState) -> bool:
        """Record a node's report; False when it is about no tracked generation/stage."""
        with self._cond:
            exp = self._expected.get(state.deployment_id)
            if state.state == "REMOVED" and exp is not None and exp.generation == state.generation \
                    and exp.node_of.get(state.stage) == node_id:
                state = StageState(state.node_id, state.deployment_id, state.stage, "FAILED",
                                   state.generation, "stage was removed on its node")
            if exp is None or exp.generation != state.generation or exp.node_of.get(state.stage) != node_id:
                return False
            exp.states[state.stage] = state.state
            if state.reason:
                exp.reasons[state.stage] = state.reason
            self._cond.notify_all()
            return True

    def node_lost(self, node_id: str) -> None:
        """A node went offline: its pending stages fail now instead of at the deadline."""
        with self._cond:
            for exp in self._expected.values():
                for index, owner in exp.node_of.items():
                    if owner == node_id and exp.states.get(index) != "READY":
                        exp.states[index] = "FAILED"
                        exp.reasons[index] = f"node {node_id} went offline"
            self._cond.notify_all()

    def forget(self, deployment_id: str, generation: int) -> None:
        with self._cond:
            exp = self._expected.get(deployment_id)
            if exp is not None and exp.generation == generation:
                del self._expected[deployment_id]
            self._cond.notify_all()

    def wait(self, deployment_id: str, generation: int, timeout: float,
             stop: threading.Event | None = None) -> tuple[str, str]:
        """Block until all stages are READY, one FAILED, or the deadline passes.

        Returns ("READY", ""), ("FAILED", reason), ("TIMEOUT", "<pending stages>") or
        ("SUPERSEDED", "") when another generation (or a stop) took over.
        """
        deadline = self._clock.monotonic() + timeout
        with self._cond:
            while True:
                exp = self._expected.get(deployment_id)
                if exp is None or exp.generation != generation or (stop is not None and stop.is_set()):
                    return "SUPERSEDED", ""
                failed = sorted(i for i, s in exp.states.items() if s == "FAILED")
                if failed:
                    i = failed[0]
                    reason = exp.reasons.get(i, "no reason")
                    return "FAILED", f"stage {i} on node {exp.node_of[i]} failed: {reason}"
                pending = sorted(i for i in exp.node_of if exp.states.get(i) != "READY")
                if not pending:
                    return "READY", ""
                remaining = deadline - self._clock.monotonic()
                if remaining <= 0:
                    return "TIMEOUT", ", ".join(
                        f"{i}@{exp.node_of[i]} ({exp.states.get(i, 'no report')})" for i in pending)
                self._cond.wait(min(remaining, 1.0))
