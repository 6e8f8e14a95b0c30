"""The drift tracker: windowed measured stage times against the plan's predictions."""

from __future__ import annotations

from cluster_orchestrator.drift import DriftTracker
from treeline_common.jobs import Placement, StagePlacement
from treeline_common.messages import StageStats


def plan(predicted_ms: float = 10.0, generation: int = 1) -> Placement:
    stage = StagePlacement(index=0, node_id="a", endpoint="tcp://a", stage_key=f"d-0/{generation}/0",
                           predicted_compute_ms=predicted_ms, profile="rpi4")
    return Placement(deployment_id="d-0", generation=generation, stages=(stage,))


def stats(requests: int, mean_ms: float, generation: int = 1) -> StageStats:
    return StageStats(node_id="a", deployment_id="d-0", stage=0, requests=requests, compute_ms_mean=mean_ms,
                      generation=generation)


def test_window_mean_comes_from_consecutive_reports() -> None:
    tracker = DriftTracker(margin=0.25)
    tracker.observe(stats(100, 10.0))
    assert tracker.measured_ms("d-0", 1, 0) is None  # one report opens the window
    tracker.observe(stats(102, 10.0))
    assert tracker.measured_ms("d-0", 1, 0) is None  # too few requests to judge
    tracker.observe(stats(200, 15.0))  # 100 requests at 20 ms each since the first report
    assert abs((tracker.measured_ms("d-0", 1, 0) or 0.0) - 20.0) < 1e-9


def test_drift_since_is_remembered_cleared_and_handled_once() -> None:
    tracker = DriftTracker(margin=0.25)
    tracker.observe(stats(10, 10.0))
    tracker.observe(stats(20, 10.0))
    assert tracker.since(plan(), 100.0) is None  # measured 10 ms as predicted
    tracker.observe(stats(30, 12.0))  # the last 10 requests took 16 ms: 60 % off
    assert tracker.drifted_stages(plan()) == [0]
    assert tracker.since(plan(), 100.0) == 100.0
    assert tracker.since(plan(), 130.0) == 100.0  # the start is kept
    tracker.handled(plan())
    assert tracker.since(plan(), 140.0) is None  # one re-plan per generation's drift
    assert tracker.since(plan(generation=2), 140.0) is None  # nothing measured for generation 2 yet


def test_a_restarted_stage_starts_a_new_window() -> None:
    tracker = DriftTracker()
    tracker.observe(stats(500, 10.0))
    tracker.observe(stats(3, 50.0))  # counters went back: the stage restarted
    assert tracker.measured_ms("d-0", 1, 0) is None
