"""An AMP4EC-style greedy split, made to work, as the baseline the exact planner must beat.

AMP4EC (arXiv 2504.00407) splits a model into ``k`` parts by cumulative cost and assigns
them to nodes by a weighted score ``0.2·resource + 0.2·load + 0.1·perf + 0.5·balance``.
Its public code does not run (see research/partitioning.md §1); this is the algorithm as
described, with its obvious defects repaired so the comparison is fair:

- cost per op is FLOPs (the original used parameter counts, wrong for depthwise convs);
- ``resource`` is bounded to [0, 1] (the original's unbounded ratio swamped the other terms);
- no random tie-breaker (ties go to the lower device index);
- a node that cannot hold a part's memory is skipped (the original never checked);
- ``k = min(max_partitions, devices)``, as AMP4EC uses every node it has.

What it still does not do — and what the exact planner does — is weigh link costs and
device speeds against each other when choosing cut points and their order.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np

from ml_scheduler.problem import Plan, PlanningProblem, evaluate

WEIGHTS = {"resource": 0.2, "load": 0.2, "perf": 0.1, "balance": 0.5}


def cumulative_cost_cuts(op_cost: np.ndarray, k: int) -> list[int]:
    """Interior positions where cumulative cost first reaches j/k of the total (j = 1..k-1)."""
    n = len(op_cost)
    cumulative = np.cumsum(op_cost, dtype=float)
    total = cumulative[-1] if n else 0.0
    positions: list[int] = []
    for j in range(1, k):
        p = int(np.searchsorted(cumulative, total * j / k, side="left")) + 1
        low = positions[-1] + 1 if positions else 1
        p = min(max(p, low), n - (k - j))  # keep every part non-empty
        positions.append(p)
    return positions


def node_scores(
    speed: np.ndarray, cpu_free: np.ndarray, mem_free: np.ndarray, mem_needed: float, tasks: np.ndarray
) -> np.ndarray:
    """AMP4EC's weighted node score with every term in [0, 1]."""
    best_speed = float(speed.max()) if speed.size and speed.max() > 0 else 1.0
    resource = 0.5 * np.clip(cpu_free, 0.0, 1.0) + 0.5 * np.clip(mem_free / max(mem_needed, 1.0), 0.0, 1.0)
    load = np.clip(cpu_free, 0.0, 1.0)
    perf = speed / best_speed
    balance = 1.0 / (1.0 + 2.0 * tasks)
    return (WEIGHTS["resource"] * resource + WEIGHTS["load"] * load + WEIGHTS["perf"] * perf
            + WEIGHTS["balance"] * balance)


def amp4ec_greedy(
    problem: PlanningProblem,
    op_cost: np.ndarray,
    speed: Sequence[float],
    cpu_free: Sequence[float] | None = None,
) -> Plan | None:
    """Greedy plan: equal-cost parts in order, each to the best-scoring unused node that fits.

    ``op_cost`` is the per-op cost used to cut (FLOPs); ``speed`` the nodes' speed factors;
    ``cpu_free`` the idle CPU fraction per node (default: all idle). Returns None when no
    node fits some part at any k.
    """
    m = problem.n_devices
    speeds = np.asarray(speed, dtype=float)
    idle = np.ones(m) if cpu_free is None else np.asarray(cpu_free, dtype=float)
    for k in range(min(problem.max_partitions, m, problem.n_ops), 0, -1):
        positions = cumulative_cost_cuts(np.asarray(op_cost, dtype=float), k)
        bounds = [0, *positions, problem.n_ops]
        tasks = np.zeros(m)
        devices: list[int] = []
        for j, (start, end) in enumerate(itertools.pairwise(bounds)):
            needed = problem.range_memory(start, end)
            scores = node_scores(speeds, idle, problem.mem_bytes, needed, tasks)
            order = sorted(range(m), key=lambda d: (-scores[d], d))
            if j == 0 and problem.first_device is not None:
                order = [problem.first_device]
            chosen = next((d for d in order if d not in devices and problem.mem_bytes[d] >= needed), None)
            if chosen is None:
                break
            devices.append(chosen)
            tasks[chosen] += 1
        else:
            plan = evaluate(problem, positions, devices)
            if plan is not None:
                return plan
    return None
