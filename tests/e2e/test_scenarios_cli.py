"""``treeline demo --scenario``: an unknown name is a usage error naming the option and the known
scenarios, before any process starts (no stack, no port taken)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from treeline_cli.scenarios import ALL, SCENARIOS, select


def test_an_unknown_scenario_is_a_usage_error_listing_the_known_ones(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TREELINE_")}
    env["TREELINE_DATA_DIR"] = str(tmp_path / "data")
    done = subprocess.run([sys.executable, "-m", "treeline_cli", "demo", "--scenario", "too-big,nope"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert "--scenario: unknown scenario 'nope'" in done.stderr and "too-big" in done.stderr, done.stderr
    assert not (tmp_path / "data" / "scenarios").exists()


def test_keep_is_refused_with_scenarios(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TREELINE_")}
    env["TREELINE_DATA_DIR"] = str(tmp_path / "data")
    done = subprocess.run([sys.executable, "-m", "treeline_cli", "demo", "--scenario", "camera", "--keep"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "--keep applies to the MobileNetV2 demo" in done.stderr, done.stderr


def test_select_keeps_the_order_asked_and_all_means_every_registered_one() -> None:
    assert [s.name for s in select("camera, too-big,camera")] == ["camera", "too-big"]
    assert [s.name for s in select(ALL)] == list(SCENARIOS)
    assert {"too-big", "throughput", "camera"} <= set(SCENARIOS)
