"""Energy budgets: the priced search returns a plan within budget, trading latency for energy."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from benchmarks.instances import random_problem
from ml_scheduler.energy import plan_within_energy, priced
from ml_scheduler.planner import plan
from ml_scheduler.planner.brute_force import brute_force
from ml_scheduler.problem import PlanningProblem, evaluate


def two_devices() -> PlanningProblem:
    """A fast power-hungry server and a slow frugal device, the input on the frugal one."""
    n = 4
    return PlanningProblem(
        op_ms=np.array([[1.0] * n, [4.0] * n]), param_bytes=np.zeros(n), live_bytes=np.ones(n),
        cut_bytes=np.full(n + 1, 1000.0), mem_bytes=np.full(2, np.inf), rtt_ms=np.full((2, 2), 1.0),
        bandwidth=np.full((2, 2), 1000.0), device_ids=("server", "rpi"), source=1, max_partitions=2,
        power_w=np.array([60.0, 5.0]), radio_nj_per_byte=np.array([5.0, 50.0]))


def test_priced_problem_costs_latency_plus_priced_energy() -> None:
    problem, lam = two_devices(), 0.5
    for positions, devices in (([], [0]), ([], [1]), ([2], [1, 0])):
        true = evaluate(problem, positions, devices)
        cost = evaluate(priced(problem, lam), positions, devices)
        assert true is not None and cost is not None
        assert np.isclose(cost.latency_ms, true.latency_ms + lam * true.energy_mj)


def test_tight_budget_moves_work_to_the_frugal_device() -> None:
    problem = two_devices()
    fastest = plan(problem)
    assert fastest is not None and fastest.devices == [0]  # 1 ms ship + 4 ms on the server
    frugal = plan_within_energy(problem, 90.0, plan)
    assert frugal is not None and frugal.energy_mj <= 90.0 and frugal.devices == [1]
    assert plan_within_energy(problem, 1.0, plan) is None  # below the least-energy plan


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10_000), scale=st.floats(0.3, 1.2))
def test_returned_plans_respect_the_budget_and_none_only_when_nothing_fits(seed: int, scale: float) -> None:
    problem = random_problem(np.random.default_rng(seed), 5, 3, objective="latency")
    if problem.power_w is None:
        return
    unconstrained = brute_force(problem)
    if unconstrained is None:
        return
    budget = unconstrained.energy_mj * scale
    result = plan_within_energy(problem, budget, plan)
    if result is not None:
        assert result.energy_mj <= budget + 1e-9
        assert evaluate(problem, result.positions, result.devices) is not None
    else:  # then no plan at all fits: check exhaustively through the priced least-energy limit
        least = plan(priced(problem, 1e6))
        true = evaluate(problem, least.positions, least.devices) if least else None
        assert true is None or true.energy_mj > budget - 1e-9
