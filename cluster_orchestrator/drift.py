"""Measured stage times against the plan's predictions (Neurosurgeon's drift, AMP4EC's re-profiling).

Nodes report per-stage counters (``StageStats``: requests so far, mean compute ms so far)
with their telemetry. :class:`DriftTracker` turns consecutive reports into the mean of the
requests served *between* them (a window, not the mean since the stage started), compares
it with the stage's ``predicted_compute_ms`` and remembers since when a deployment's
stages disagree by more than the margin. The reconcile rule re-plans a deployment that has
drifted for longer than the drift window; the device classes of the drifted stages are
re-profiled first, so the cost model learns what the stages measure.

State is observation only (kept in memory: after a restart it is measured again).
Thread-safe: MQTT thread writes, reconcile thread reads.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from treeline_common.jobs import Placement
from treeline_common.messages import StageStats

MIN_WINDOW_REQUESTS = 5  # a window with fewer requests says too little to judge


@dataclass
class _Counter:
    requests: int
    total_ms: float
    window_ms: float | None = None


class DriftTracker:
    """Windowed measured compute ms per (deployment, generation, stage), and drift verdicts."""

    def __init__(self, margin: float = 0.25) -> None:
        self.margin = margin
        self._lock = threading.Lock()
        self._counters: dict[tuple[str, int, int], _Counter] = {}
        self._since: dict[str, float] = {}
        self._handled: set[tuple[str, int]] = set()

    def observe(self, stats: StageStats) -> None:
        """Fold one report in; a window closes when at least MIN_WINDOW_REQUESTS were served."""
        key = (stats.deployment_id, stats.generation, stats.stage)
        total = stats.requests * stats.compute_ms_mean
        with self._lock:
            counter = self._counters.get(key)
            if counter is None or stats.requests < counter.requests:
                self._counters[key] = _Counter(stats.requests, total)
                return
            served = stats.requests - counter.requests
            if served >= MIN_WINDOW_REQUESTS:
                counter.window_ms = (total - counter.total_ms) / served
                counter.requests, counter.total_ms = stats.requests, total

    def measured_ms(self, deployment_id: str, generation: int, stage: int) -> float | None:
        with self._lock:
            counter = self._counters.get((deployment_id, generation, stage))
            return counter.window_ms if counter else None

    def drifted_stages(self, placement: Placement) -> list[int]:
        """Stage indexes whose last window differs from the prediction by more than the margin."""
        drifted = []
        for stage in placement.stages:
            predicted = stage.predicted_compute_ms
            measured = self.measured_ms(placement.deployment_id, placement.generation, stage.index)
            if predicted is None or measured is None or predicted <= 0.0:
                continue
            if abs(measured - predicted) > self.margin * predicted:
                drifted.append(stage.index)
        return drifted

    def since(self, placement: Placement, now: float) -> float | None:
        """Since when the deployment has drifted (None: it agrees, or this generation was handled)."""
        deployment_id = placement.deployment_id
        if (deployment_id, placement.generation) in self._handled or not self.drifted_stages(placement):
            self._since.pop(deployment_id, None)
            return None
        return self._since.setdefault(deployment_id, now)

    def handled(self, placement: Placement) -> None:
        """A re-plan for this generation's drift started: do not trigger again for it."""
        self._handled.add((placement.deployment_id, placement.generation))
        self._since.pop(placement.deployment_id, None)
