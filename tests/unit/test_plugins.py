"""Filter and score plugins, called directly (no runner): table-driven, one passing and one
failing node per filter with the exact reason code."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from deployment_descriptors import NodeSelector
from ml_scheduler.framework import Code, FilterPlugin, PlacementRequest, ScorePlugin
from ml_scheduler.plugins import FILTER_NAMES, PLUGINS, SCORE_NAMES
from ml_scheduler.plugins import filters as f
from ml_scheduler.plugins import scores as s
from ml_scheduler.snapshot import ClusterSnapshot, NodeView
from treeline_test_helpers import BASE_REQUEST
from treeline_test_helpers import node_view as node

BASE = BASE_REQUEST


# (filter class, request changes, passing node changes, failing node changes, reason code)
FILTER_CASES = [
    (f.NodeOnline, {}, {}, {"online": False}, f.REASON_OFFLINE),
    (f.NodeCompute, {}, {"speed_factor": 0.1}, {"speed_factor": 0.0}, f.REASON_NO_COMPUTE),
    (f.NodeMemory, {}, {"memory_limit_mb": 100.0}, {"memory_limit_mb": 99.0}, f.REASON_INSUFFICIENT_MEMORY),
    (f.NodeMemory, {}, {"memory_limit_mb": None}, {"memory_limit_mb": 1.0}, f.REASON_INSUFFICIENT_MEMORY),
    (f.NodeArch, {"allowed_archs": ("aarch64",)}, {"arch": "aarch64"}, {"arch": "x86_64"}, f.REASON_ARCH),
    (f.Accelerator, {"required_accelerators": ("gpu",)}, {"accelerators": ("gpu",)},
     {"accelerators": ("tpu",)}, f.REASON_ACCELERATOR),
    (f.Runtime, {}, {"runtimes": ("tflite", "onnxruntime")}, {"runtimes": ("tflite",)}, f.REASON_RUNTIME),
    (f.Runtime, {"required_runtime": "tflite"}, {"runtimes": ("tflite",)}, {}, f.REASON_RUNTIME),
    (f.BatteryLevel, {"min_battery_percent": 30.0}, {"battery_percent": 30.0}, {"battery_percent": 29.9},
     f.REASON_BATTERY),
    (f.BatteryLevel, {"min_battery_percent": 30.0}, {"battery_percent": None}, {"battery_percent": 0.0},
     f.REASON_BATTERY),
    (f.DirectConstraint, {"direct_nodes": ("name-ok",)}, {}, {}, f.REASON_DIRECT),
    (f.DirectConstraint, {"direct_labels": ("gpu-pool",)}, {"labels": ("gpu-pool",)}, {"labels": ("other",)},
     f.REASON_DIRECT),
    # 1e9 FLOPs at 10 GFLOP/s = 100 ms: 10 W -> 1000 mJ, 0.1 W -> 10 mJ; 600 kB at 20 nJ/B = 12 mJ.
    (f.EnergyBudget, {"energy_budget_mj": 11.0}, {"power_w": 0.1}, {"power_w": 10.0},
     f.REASON_ENERGY_BUDGET),
    (f.EnergyBudget, {"energy_budget_mj": 11.0}, {"radio_nj_per_byte": 10.0}, {"radio_nj_per_byte": 20.0},
     f.REASON_ENERGY_BUDGET),
]


@pytest.mark.parametrize(("plugin_cls", "request_kw", "ok_kw", "bad_kw", "code"), FILTER_CASES,
                         ids=[f"{c[0].name}-{i}" for i, c in enumerate(FILTER_CASES)])  # type: ignore[attr-defined]
def test_filter_passes_one_node_and_rejects_the_other_with_its_code(
        plugin_cls: type, request_kw: dict, ok_kw: dict, bad_kw: dict, code: str) -> None:
    plugin = plugin_cls()
    assert isinstance(plugin, FilterPlugin)
    request = dataclasses.replace(BASE, **request_kw)
    snapshot = ClusterSnapshot((node("ok", **ok_kw), node("bad", **bad_kw)))
    mask = plugin.filter(request, snapshot)
    assert mask.dtype == np.bool_ and mask.tolist() == [True, False]
    reasons = plugin.reasons(request, snapshot, np.flatnonzero(~mask))
    assert [r[0] for r in reasons] == [code]
    assert reasons[0][1]  # a human message


def test_memory_message_names_both_sizes() -> None:
    snapshot = ClusterSnapshot((node("a", memory_limit_mb=64.0),))
    [(code, message)] = f.NodeMemory().reasons(BASE, snapshot, np.array([0]))
    assert code == "insufficient_memory"
    assert message == "node has 64.00 MiB, smallest stage needs 100.00 MiB"


def test_direct_matches_node_id_as_well_as_name() -> None:
    request = dataclasses.replace(BASE, direct_nodes=("b",))
    snapshot = ClusterSnapshot((node("a"), node("b")))
    assert f.DirectConstraint().filter(request, snapshot).tolist() == [False, True]


@pytest.mark.parametrize(("pin", "online", "want"), [
    (None, True, [True, True]),
    (NodeSelector(node="name-a"), True, [True, True]),  # rejects nothing: the planner pins stage 0
    (NodeSelector(label="camera"), True, [True, True]),
    (NodeSelector(node="name-a"), False, [False, False]),  # the only match is offline
    (NodeSelector(node="nowhere"), True, [False, False]),
    (NodeSelector(label="nowhere"), True, [False, False]),
])
def test_privacy_pin_rejects_everyone_only_when_no_online_node_matches(
        pin: NodeSelector | None, online: bool, want: list[bool]) -> None:
    request = dataclasses.replace(BASE, privacy_pin=pin)
    snapshot = ClusterSnapshot((node("a", online=online, labels=("camera",)), node("b")))
    plugin = f.PrivacyPin()
    assert plugin.filter(request, snapshot).tolist() == want
    assert plugin.rejection is Code.UNSCHEDULABLE_AND_UNRESOLVABLE
    if not all(want):
        assert {r[0] for r in plugin.reasons(request, snapshot, np.array([0, 1]))} == {f.REASON_PRIVACY_PIN}


def test_unconstrained_request_rejects_no_healthy_node() -> None:
    snapshot = ClusterSnapshot((node("a"), node("b", arch="armv6l", battery_percent=1.0)))
    for name in FILTER_NAMES:
        plugin = PLUGINS.create(name)
        assert isinstance(plugin, FilterPlugin) and plugin.filter(BASE, snapshot).all(), name


def test_transient_filters_are_unschedulable_the_rest_unresolvable() -> None:
    plugins = [PLUGINS.create(name) for name in FILTER_NAMES]
    transient = {p.name for p in plugins if isinstance(p, FilterPlugin) and p.rejection is Code.UNSCHEDULABLE}
    assert transient == {"node_online", "battery_level"}


# ----------------------------------------------------------------------------- scores


def scores_of(plugin: ScorePlugin, *nodes: NodeView, request: PlacementRequest = BASE) -> list[float]:
    snapshot = ClusterSnapshot(nodes)
    return [round(float(v), 3) for v in plugin.score(request, snapshot, np.arange(len(nodes)))]


def test_compute_speed_is_relative_to_the_fastest_candidate() -> None:
    got = scores_of(s.ComputeSpeed(), node("a", speed_factor=0.5), node("b", speed_factor=0.25))
    assert got == [100.0, 50.0]


def test_memory_headroom_log_scale_and_unlimited() -> None:
    got = scores_of(s.MemoryHeadroom(), node("a", memory_limit_mb=None),
                    node("b", memory_limit_mb=16384.0 + 10), node("c", memory_limit_mb=5.0),
                    node("d", memory_limit_mb=4096.0, memory_available_mb=10.0))
    assert got[0] == 100.0 and got[1] == 100.0 and got[2] == 0.0 and got[3] == 0.0
    mid = scores_of(s.MemoryHeadroom(), node("e", memory_limit_mb=10.0 + 127.0))[0]
    assert mid == pytest.approx(100 * math.log1p(127) / math.log1p(16384), abs=1e-3)


def test_battery_score_mains_is_100() -> None:
    assert scores_of(s.BatteryScore(), node("a"), node("b", battery_percent=42.0)) == [100.0, 42.0]


def test_link_quality_orders_by_bandwidth_and_rtt() -> None:
    got = scores_of(s.LinkQuality(), node("fast", uplink_mbps=1000.0, link_rtt_ms=0.0),
                    node("mid", uplink_mbps=100.0, link_rtt_ms=2.0),
                    node("slow", uplink_mbps=1.0, link_rtt_ms=1000.0))
    assert got[0] == 100.0 and got[2] == 0.0 and 0 < got[1] < 100


def test_low_load_and_energy_efficiency() -> None:
    assert scores_of(s.LowLoad(), node("a", cpu_percent=25.0), node("b", cpu_percent=100.0)) == [75.0, 0.0]
    # W per unit of work: a 65/1 = 65, b 6/0.25 = 24 (best), c 10/0.5 = 20 -> c is best.
    got = scores_of(s.EnergyEfficiency(), node("a", power_w=65.0), node("b", power_w=6.0, speed_factor=0.25),
                    node("c", power_w=10.0, speed_factor=0.5))
    assert got == [round(100 * 20 / 65, 3), round(100 * 20 / 24, 3), 100.0]


def test_every_score_plugin_stays_in_range_on_odd_nodes() -> None:
    odd = (node("a", speed_factor=0.0, memory_limit_mb=0.0, uplink_mbps=0.0, link_rtt_ms=1e9,
                cpu_percent=150.0, power_w=0.0, battery_percent=0.0),
           node("b", memory_limit_mb=None, power_w=1e9))
    for name in SCORE_NAMES:
        plugin = PLUGINS.create(name)
        assert isinstance(plugin, ScorePlugin)
        got = np.asarray(plugin.score(BASE, ClusterSnapshot(odd), np.arange(2)))
        assert got.shape == (2,) and np.isfinite(got).all() and (got >= 0).all() and (got <= 100).all(), name
