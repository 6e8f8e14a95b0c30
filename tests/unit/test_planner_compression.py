"""Boundary compression in the planner (ml_scheduler.planner.compression): chosen only where the
link is the bottleneck, only among the codecs the SLA allows, and charged as compressed bytes."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from ml_scheduler.planner import plan as exact_plan
from ml_scheduler.planner.compression import bottleneck_edges, propose
from ml_scheduler.problem import PlanningProblem

CUT = 1_000_000.0  # bytes crossing the only cut the memory allows (op 2)


def _two_devices(mbit_per_s: float, objective: str) -> PlanningProblem:
    """Two devices that can each hold only half of a 4-op model: the plan must cut at op 2."""
    bandwidth = mbit_per_s * 125.0  # bytes per ms
    return PlanningProblem(
        op_ms=np.full((2, 4), 5.0), param_bytes=np.full(4, 10.0), live_bytes=np.zeros(4),
        cut_bytes=np.array([600.0, 10.0, CUT, 10.0, 4.0]), mem_bytes=np.array([25.0, 25.0]),
        rtt_ms=np.full((2, 2), 1.0), bandwidth=np.full((2, 2), bandwidth), device_ids=("a", "b"),
        max_partitions=2, objective=objective)


@pytest.mark.parametrize("objective", ["throughput", "latency"])
def test_slow_link_makes_compression_chosen_and_charged_on_compressed_bytes(objective: str) -> None:
    problem = _two_devices(50.0, objective)  # 160 ms on the wire against 10 ms of compute a side
    plan = exact_plan(problem)
    assert plan is not None and plan.positions == [2]
    proposal = propose(problem, plan, ["fp16", "int8"])
    assert proposal is not None
    assert [(e.stage, e.position, e.bytes_before) for e in proposal.edges] == [(0, 2, CUT)]
    assert proposal.codecs == ("int8", "fp16")  # fewest bytes first
    wire = {codec: proposal.plans[codec].stages[1].transfer_in_ms for codec in ("", "fp16", "int8")}
    assert wire[""] == pytest.approx(1.0 + CUT / 6250.0)
    assert wire["fp16"] == pytest.approx(1.0 + CUT / 2 / 6250.0)
    assert wire["int8"] == pytest.approx(1.0 + (CUT / 4 + 4) / 6250.0)
    assert proposal.bytes_after("int8") == [CUT / 4 + 4]
    assert proposal.ms_saved("int8") == pytest.approx(wire[""] - wire["int8"])
    assert proposal.ms_saved("fp16") == pytest.approx(wire[""] - wire["fp16"])


@pytest.mark.parametrize("objective", ["throughput", "latency"])
def test_fast_link_is_not_compressed(objective: str) -> None:
    problem = _two_devices(10_000.0, objective)  # 0.8 ms + 1 ms rtt on the wire: compute dominates
    plan = exact_plan(problem)
    assert plan is not None and plan.positions == [2]
    assert bottleneck_edges(problem, plan) == []
    assert propose(problem, plan, ["fp16", "int8"]) is None


def test_not_compressed_when_the_sla_allows_no_codec() -> None:
    problem = _two_devices(50.0, "throughput")
    plan = exact_plan(problem)
    assert plan is not None
    assert propose(problem, plan, []) is None
    only_fp16 = propose(problem, plan, ["fp16"])
    assert only_fp16 is not None and only_fp16.codecs == ("fp16",) and set(only_fp16.plans) == {"", "fp16"}
    with pytest.raises(ValueError, match="unknown compression 'zip'"):
        propose(problem, plan, ["zip"])


def test_throughput_rule_needs_the_link_to_be_the_largest_term() -> None:
    # 30 ms on the wire, but stage compute of 40 ms: the link is not the bottleneck
    problem = _two_devices(50.0, "throughput")
    problem = dataclasses.replace(problem, op_ms=np.full((2, 4), 20.0),
                                  cut_bytes=np.array([600.0, 10.0, 181_250.0, 10.0, 4.0]))
    plan = exact_plan(problem)
    assert plan is not None and plan.stages[1].transfer_in_ms == pytest.approx(30.0)
    assert propose(problem, plan, ["int8"]) is None
