"""Exact joint partitioning and placement: cut an op chain and choose which devices run it, in what order.

Why: a request's model is cut into contiguous ranges, each on a distinct device; the choice of
devices, their order and the cuts interact through link costs and memory, so greedy choices
are not optimal (partitioning.md §7). At our sizes an exact DP is cheap (dp.py), so Treeline
ships the optimum, not a heuristic. Costs are exactly :func:`ml_scheduler.problem.evaluate`'s:
the planner picks positions and devices and then asks ``evaluate`` for the returned Plan.

Contract: ``plan(problem)`` is pure and deterministic; it returns the Plan minimising
``problem.objective`` ("latency": ``latency_ms``; "throughput": ``bottleneck_ms``), or None when
no assignment satisfies the memory, pin and partition limits. Ties go to fewer stages, then
lower device indices, then earlier cuts. The class-count DP is used automatically when some
devices are interchangeable (tables.device_classes) and it needs fewer states.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

from ml_scheduler.planner.dp import PlannerTooLarge, Solution, count_states, solve
from ml_scheduler.planner.tables import Tables, build_tables, device_classes, singleton_classes
from ml_scheduler.problem import OBJECTIVES, Plan, PlanningProblem, evaluate

__all__ = ["PlannerTooLarge", "plan", "plan_with", "tables_for"]

logger = logging.getLogger(__name__)


def tables_for(problem: PlanningProblem, use_classes: bool | None = None) -> Tables:
    """Tables for the subset DP (``use_classes=False``), the class DP (True) or the cheaper (None)."""
    singles = singleton_classes(problem)
    if use_classes is False:
        return build_tables(problem, singles)
    classes = device_classes(problem)
    if use_classes is None and len(classes) == len(singles):
        return build_tables(problem, singles)
    tables = build_tables(problem, classes)
    if use_classes is None:
        k = tables.max_stages
        cost_classes = count_states(tables.caps, k) * len(classes)
        cost_subsets = count_states(np.ones(len(singles), dtype=np.int64), k) * len(singles)
        if cost_subsets <= cost_classes:
            return build_tables(problem, singles)
    return tables


def plan_with(problem: PlanningProblem, use_classes: bool | None = None) -> Plan | None:
    """:func:`plan` with the DP variant forced (tests compare the variants)."""
    if problem.objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {problem.objective!r}; known: {OBJECTIVES}")
    if problem.max_partitions < 1 or problem.n_devices == 0 or problem.n_ops == 0:
        return None
    tables = tables_for(problem, use_classes)
    solution: Solution | None = solve(tables, problem.objective)
    if solution is None:
        return None
    result = evaluate(problem, list(solution.positions), list(solution.devices))
    if result is None:  # only possible through rounding at an exact memory limit
        logger.warning("DP plan %s rejected by evaluate; treating as infeasible", solution)
        return None
    variant = "classes" if len(tables.members) < problem.n_devices else "subsets"
    return dataclasses.replace(result, notes=(*result.notes, f"planner=dp-{variant}"))


def plan(problem: PlanningProblem) -> Plan | None:
    """The optimal Plan for ``problem.objective``, or None when infeasible (module docstring)."""
    return plan_with(problem, None)
