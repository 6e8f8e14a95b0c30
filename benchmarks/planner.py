"""Planner benchmark: optimality gap against brute force and plan time at two scales.

Run ``python -m benchmarks.planner [--quick] [--json PATH]``. Prints a table and writes JSON
(default ``benchmarks/results/planner.json``):

- ``optimality_gap_max``: max over random small instances (both objectives, chains and DAGs)
  of ``(planner cost - brute-force cost) / brute-force cost``; ``instances`` counts them and
  ``feasibility_mismatches`` counts instances where exactly one of the two found a plan.
- ``plan_ms_p50_200ops_8dev`` / ``plan_ms_p90_...`` (latency) and ``..._throughput``: 200 ops,
  8 distinct heterogeneous devices, max_partitions 8 (subset DP).
- ``plan_ms_p50_1000ops_16dev`` / ``..._throughput``: 1000 ops, 16 devices of 4 types
  (class-count DP), max_partitions 16.
Each timing is ``time.perf_counter`` around ``plan`` on a different seeded instance.

Unless ``--planner-only``, the report also carries the other suites' keys:
``place_ms_p50_10000nodes`` (benchmarks.placement), ``prediction_error_p50`` (benchmarks.costmodel)
and ``latency_ratio_vs_greedy`` / ``..._predicted`` (benchmarks.greedy, on a real stack).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from benchmarks import costmodel, greedy, placement
from benchmarks.instances import random_problem
from benchmarks.report import add_json_option, benchmark_parser, report
from ml_scheduler.planner import plan
from ml_scheduler.planner.brute_force import brute_force
from ml_scheduler.problem import PlanningProblem

log = logging.getLogger(__name__)



def optimality_gap(count: int, seed: int = 0) -> dict[str, Any]:
    """Planner vs brute force on ``count`` random instances (n <= 7, m <= 4) per objective."""
    gap, mismatches, total = 0.0, 0, 0
    for objective in ("latency", "throughput"):
        for i in range(count):
            rng = np.random.default_rng([seed, i, objective == "latency"])
            problem = random_problem(rng, int(rng.integers(1, 8)), int(rng.integers(1, 5)),
                                     objective=objective, shape="dag" if i % 2 else "chain")
            got, want = plan(problem), brute_force(problem)
            total += 1
            if (got is None) != (want is None):
                mismatches += 1
            elif got is not None and want is not None:
                gap = max(gap, (got.cost - want.cost) / max(want.cost, 1e-300))
    return {"optimality_gap_max": gap, "instances": total, "feasibility_mismatches": mismatches}


def time_plans(make: Callable[[np.random.Generator], PlanningProblem], reps: int,
               seed: int) -> list[float]:
    """Plan times in ms, one fresh instance per repetition (instance building not timed)."""
    times = []
    for i in range(reps):
        problem = make(np.random.default_rng([seed, i]))
        start = time.perf_counter()
        plan(problem)
        times.append((time.perf_counter() - start) * 1000.0)
    return times


def _scale(n_ops: int, n_devices: int, n_types: int | None,
           objective: str) -> Callable[[np.random.Generator], PlanningProblem]:
    def make(rng: np.random.Generator) -> PlanningProblem:
        return random_problem(rng, n_ops, n_devices, n_types, objective, max_partitions=n_devices,
                              shape="chain", with_pin=False)
    return make


def run(quick: bool = False) -> dict[str, Any]:
    """All planner metrics as a flat dict (the JSON report)."""
    result: dict[str, Any] = optimality_gap(100 if quick else 150)
    reps = 11 if quick else 21
    scales = [("200ops_8dev", 200, 8, None), ("1000ops_16dev", 1000, 16, 4)]
    for label, n_ops, n_devices, n_types in scales:
        for objective in ("latency", "throughput"):
            suffix = "" if objective == "latency" else "_throughput"
            times = time_plans(_scale(n_ops, n_devices, n_types, objective), reps, seed=n_ops)
            result[f"plan_ms_p50_{label}{suffix}"] = float(np.percentile(times, 50))
            result[f"plan_ms_p90_{label}{suffix}"] = float(np.percentile(times, 90))
    result["timing_repetitions"] = reps
    return result


def run_all(quick: bool = False, planner_only: bool = False) -> dict[str, Any]:
    """Every metric issue 3 asks for: planner optimality and speed, placement speed over 10,000
    nodes, cost-model prediction error, and the greedy comparison on a real stack."""
    result = run(quick)
    if planner_only:
        return result
    for name, suite in (("placement", placement), ("costmodel", costmodel), ("greedy", greedy)):
        log.info("running the %s benchmark", name)
        result.update(suite.run(quick))
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = benchmark_parser(__doc__, "fewer instances and repetitions")
    add_json_option(parser, "planner")
    parser.add_argument("--planner-only", action="store_true",
                        help="only the planner's optimality and speed (no stack, no profiling)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    result = run_all(args.quick, args.planner_only)
    report(result, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
