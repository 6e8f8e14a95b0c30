"""Where edge-cloud collaboration wins: every registered scenario, measured, figures merged.

Run ``python -m benchmarks.collaboration [--quick] [--scenario NAME[,NAME]] [--json PATH]``.
Each scenario of :data:`treeline_cli.scenarios.REGISTERED` runs on a stack of its own devices
(real processes on free loopback ports, a temporary data directory) exactly as
``treeline demo --scenario NAME`` runs it; the table is the union of their ``figures``
(each scenario's keys are its own, e.g. ``too_big_latency_ms_split``, ``throughput_gain_vs_best_single``,
``pipeline_efficiency``, ``camera_speedup_vs_ship_frame``, ``camera_raw_bytes_left_device``, the
cascade's and the battery's), plus:

- ``prediction_error_p50`` [goal <= 0.15]: the median over every deployed plan of every scenario of
  ``|measured p50 - predicted| / measured p50`` (each scenario's ``prediction_errors``), and
  ``prediction_error_p50_<name>`` over one scenario's plans;
- ``scenario_seconds_<name>``: wall time of each scenario, its stack's start included;
  ``scenario_failed_<name>``: the error of a scenario that failed (the others still run).

The JSON keeps each scenario's record (plans, explanations) under ``scenarios``. Figures measured
on a loaded 2-core host vary from run to run: emulated slow devices multiply any contention.
"""

from __future__ import annotations

import io
import json
import logging
import math
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.report import add_json_option, benchmark_parser, report
from treeline_cli.scenarios import ALL, select
from treeline_cli.scenarios.base import Scenario, add_nodes, merge_figures
from treeline_cli.scenarios.runner import run_scenario
from treeline_cli.stack import StackConfig, pick_ports, start_stack

log = logging.getLogger(__name__)
GOALS = {"prediction_error_p50": "<= 0.15", "throughput_gain_vs_best_single": ">= 1.5",
         "pipeline_efficiency": ">= 0.9"}


def run_one(scenario: Scenario, quick: bool, echo: bool) -> dict[str, Any]:
    """One scenario on a fresh stack of its devices (free ports, temporary data dir); its record."""
    out = sys.stdout if echo else io.StringIO()
    with tempfile.TemporaryDirectory(prefix=f"treeline-{scenario.name}-") as tmp:
        stack = start_stack(pick_ports(StackConfig(data_dir=Path(tmp), nodes=0, node_labels={},
                                                   log_level="WARNING")))
        try:
            add_nodes(stack, scenario.stack)
            stack.wait_ready(timeout=90)
            path = Path(tmp) / f"{scenario.name}.json"
            run_scenario(scenario, stack, out, quick, path)
            record: dict[str, Any] = json.loads(path.read_text())  # as written: plain JSON values
            return record
        finally:
            stack.stop()


def finite_errors(record: dict[str, Any]) -> list[float]:
    """A scenario's ``prediction_errors`` that are numbers (a plan without a prediction has NaN)."""
    return [float(e) for e in record.get("prediction_errors") or []
            if isinstance(e, int | float) and math.isfinite(e)]


def run(quick: bool, names: str = ALL, echo: bool = True) -> dict[str, Any]:
    """Every chosen scenario, one after the other; merged figures (see the module docstring)."""
    records: dict[str, dict[str, Any]] = {}
    seconds: dict[str, float] = {}
    failed: dict[str, str] = {}
    for scenario in select(names):
        started = time.monotonic()
        key = scenario.name.replace("-", "_")
        try:
            records[scenario.name] = run_one(scenario, quick, echo)
        except Exception as exc:  # one broken scenario must not lose the others' figures: reported
            log.exception("scenario %s failed", scenario.name)
            failed[f"scenario_failed_{key}"] = f"{type(exc).__name__}: {exc}"
        seconds[f"scenario_seconds_{key}"] = time.monotonic() - started
    errors = {name: finite_errors(r) for name, r in records.items()}
    every = [e for values in errors.values() for e in values]
    per_scenario = {f"prediction_error_p50_{name.replace('-', '_')}": statistics.median(values)
                    for name, values in errors.items() if values}
    return {**merge_figures(records), **seconds, **failed, **per_scenario,
            "prediction_error_p50": statistics.median(every) if every else math.nan,
            "prediction_errors_count": len(every), "goals": GOALS,
            "scenarios": {name: {k: v for k, v in r.items() if k != "figures"}
                          for name, r in records.items()}}


def main(argv: Sequence[str] | None = None) -> int:
    parser = benchmark_parser(__doc__, "fewer requests per alternative (the scenarios' quick mode)")
    parser.add_argument("--scenario", default=ALL, metavar="NAME[,NAME]",
                        help="only these scenarios (default: every registered one)")
    add_json_option(parser, "collaboration")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    try:
        select(args.scenario)
    except ValueError as exc:
        parser.error(f"--scenario: {exc}")
    report({**run(args.quick, args.scenario), "quick": args.quick}, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
