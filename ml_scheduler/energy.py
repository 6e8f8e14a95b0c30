"""Plans within an energy budget: a Lagrangian search over the exact latency planner.

Why this works with the same DP: energy per inference is additive over stages and links,
just like latency. Pricing energy at ``lam`` ms per mJ turns the problem into a plain latency
problem with ``op_ms' = op_ms * (1 + lam * power_w)`` and
``1 / bandwidth' = 1 / bandwidth + lam * radio_nj_per_byte * 1e-6``, which the exact planner
solves. Raising ``lam`` trades latency for energy; the search returns the lowest-latency plan
it meets, among the plans optimal for some price, whose *true* energy (re-evaluated on the
original problem) fits the budget.

Guarantee: a returned plan always satisfies the budget and every other constraint. It is the
best plan on the lower convex hull of the latency/energy trade-off, not necessarily the best
plan overall (a budget-constrained shortest path is NP-hard); ``None`` means no priced plan
met the budget, which for a budget below the least-energy plan's energy is exact.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

from ml_scheduler.problem import Plan, PlanningProblem, evaluate

Planner = Callable[[PlanningProblem], Plan | None]


def priced(problem: PlanningProblem, lam: float) -> PlanningProblem:
    """The latency problem whose cost is ``latency_ms + lam * energy_mj``."""
    m = problem.n_devices
    power = problem.power_w if problem.power_w is not None else np.zeros(m)
    radio = problem.radio_nj_per_byte if problem.radio_nj_per_byte is not None else np.zeros(m)
    op_ms = problem.op_ms * (1.0 + lam * power[:, None])
    inverse = 1.0 / problem.bandwidth + lam * radio[:, None] * 1e-6
    return dataclasses.replace(problem, op_ms=op_ms, bandwidth=1.0 / inverse, objective="latency")


def _true_plan(problem: PlanningProblem, candidate: Plan | None) -> Plan | None:
    return None if candidate is None else evaluate(problem, candidate.positions, candidate.devices)


def plan_within_energy(problem: PlanningProblem, budget_mj: float, planner: Planner,
                       iterations: int = 24) -> Plan | None:
    """The lowest-latency priced plan whose energy per inference is at most ``budget_mj``."""
    best = planner(problem)
    if best is None or best.energy_mj <= budget_mj:
        return best
    best = None
    low, high = 0.0, 1e-3
    for _ in range(40):  # find a price at which the plan fits the budget
        plan = _true_plan(problem, planner(priced(problem, high)))
        if plan is not None and plan.energy_mj <= budget_mj:
            best = plan
            break
        low, high = high, high * 8.0
    if best is None:
        return None
    for _ in range(iterations):  # the smallest such price gives the lowest latency
        middle = (low + high) / 2.0
        plan = _true_plan(problem, planner(priced(problem, middle)))
        if plan is not None and plan.energy_mj <= budget_mj:
            high = middle
            if plan.latency_ms < best.latency_ms:
                best = plan
        else:
            low = middle
    return dataclasses.replace(best, objective=problem.objective,
                               notes=(*best.notes, f"energy-priced (budget {budget_mj:g} mJ)"))
