"""Exhaustive reference planner: every stage count, cut combination and device sequence.

Why: the DPs' optimality claims are only as good as the reference they are tested against;
this one has no cleverness to get wrong. It calls :func:`ml_scheduler.problem.evaluate` for
every candidate, so it also pins down what "optimal" means. Exponential: only for tiny
instances (n <= 8 ops, m <= 4 devices).

Ties: the lexicographically smallest (cost, number of stages, devices, positions).
"""

from __future__ import annotations

from itertools import combinations, permutations

from ml_scheduler.problem import Plan, PlanningProblem, evaluate

MAX_OPS = 8
MAX_DEVICES = 4


def brute_force(problem: PlanningProblem) -> Plan | None:
    """The optimal Plan for ``problem.objective`` by enumeration, or None when nothing is feasible."""
    n, m = problem.n_ops, problem.n_devices
    if n > MAX_OPS or m > MAX_DEVICES:
        raise ValueError(f"brute force is for n <= {MAX_OPS}, m <= {MAX_DEVICES}; got n={n}, m={m}")
    best: tuple[float, int, tuple[int, ...], tuple[int, ...]] | None = None
    best_plan: Plan | None = None
    for k in range(1, min(problem.max_partitions, m, n) + 1):
        for positions in combinations(range(1, n), k - 1):
            for devices in permutations(range(m), k):
                candidate = evaluate(problem, positions, devices)
                if candidate is None:
                    continue
                key = (candidate.cost, k, devices, positions)
                if best is None or key < best:
                    best, best_plan = key, candidate
    return best_plan
