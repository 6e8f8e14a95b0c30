"""Run a scenario on its own stack and keep its record.

Each scenario gets a stack of its own devices: the settings' stack (ports, broker, threads, log
level) with no node of its own, one cluster, and its state under ``<data dir>/scenarios/<name>/``
(so its nodes never meet another scenario's, or the plain demo's, in the registry or the
cluster). Its record goes to ``<data dir>/scenarios/<name>.json``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from treeline_cli.scenarios.base import Scenario
from treeline_cli.stack import Stack, StackConfig

RESULTS_DIR = "scenarios"


def scenario_config(base: StackConfig, scenario: Scenario) -> StackConfig:
    """``base`` with no node, one cluster and the scenario's own data directory."""
    return dataclasses.replace(base, data_dir=base.data_dir / RESULTS_DIR / scenario.name, nodes=0,
                               node_labels={}, clusters=1, nodes_per_cluster=(), more_cluster_ports=())


def results_path(data_dir: Path, scenario: Scenario) -> Path:
    """Where a scenario's record goes: ``<data dir>/scenarios/<name>.json``."""
    return data_dir / RESULTS_DIR / f"{scenario.name}.json"


def run_scenario(scenario: Scenario, stack: Stack, out: TextIO, quick: bool, results: Path) -> dict[str, Any]:
    """Run ``scenario`` on its started stack, write its record (JSON) to ``results`` and return it."""
    out.write(f"\n=== scenario {scenario.name}: {scenario.description} ({scenario.stack.describe()})\n")
    result = scenario.run(stack, out, quick)
    record = {"scenario": scenario.name, "description": scenario.description,
              "devices": scenario.stack.describe(), "quick": quick,
              "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
              "machine": f"{platform.node()} ({platform.machine()}, {os.cpu_count()} CPUs)", **result}
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text(json.dumps(record, indent=2, default=str) + "\n")
    out.write(f"Figures written to {results}\n")
    return record
