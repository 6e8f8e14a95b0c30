"""``treeline demo --scenario``: an unknown name is a usage error naming the option and the known
scenarios, before any process starts (no stack, no port taken)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from treeline_cli.scenarios import ALL, SCENARIOS, select
from treeline_cli.scenarios.base import merge_figures
from treeline_cli.scenarios.too_big import EDGES, shape_of


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


def test_figures_of_two_scenarios_merge_and_a_shared_name_is_refused() -> None:
    merged = merge_figures({"a": {"figures": {"x": 1.0}}, "b": {"figures": {"y": 2.0}}, "c": {}})
    assert merged == {"x": 1.0, "y": 2.0}
    with pytest.raises(ValueError, match="scenario b reports 'x'"):
        merge_figures({"a": {"figures": {"x": 1.0}}, "b": {"figures": {"x": 2.0}}})


def test_too_big_names_the_shape_of_a_plan() -> None:
    assert shape_of(list(EDGES[:2]), EDGES) == "split"
    assert shape_of(["cloud-1"], EDGES) == "offload"
    assert shape_of([EDGES[0]], EDGES) == "one edge board"
    assert shape_of([EDGES[0], "cloud-1"], EDGES) == "mixed"
