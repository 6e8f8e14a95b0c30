"""MlScheduler end to end over a frozen snapshot: strategies, SLA limits, pins, explanations."""

from __future__ import annotations

import json

import pytest

from deployment_descriptors import load_profile, parse_microservice
from ml_scheduler.costmodel import CostModel
from ml_scheduler.graph import analyze_model
from ml_scheduler.scheduler import MlScheduler
from ml_scheduler.snapshot import ClusterSnapshot, NodeView
from model_zoo.tiny import tiny_dag_model

GRAPH = analyze_model(tiny_dag_model())
COSTS = CostModel.from_profiles(GRAPH, {})


def node(node_id: str, speed: float, *, online: bool = True, battery: float | None = None,
         labels: tuple[str, ...] = (), uplink: float = 1000.0) -> NodeView:
    return NodeView(node_id, node_id, "native", online, speed, 4096, "x86_64", (), battery, labels,
                    uplink_mbps=uplink, device_class=node_id)


NODES = ClusterSnapshot((node("fast", 1.0), node("mid", 0.5, labels=("camera",), uplink=10.0),
                         node("slow", 0.1, battery=10.0), node("gone", 1.0, online=False)))


def microservice(constraints: list[dict] | None = None, **model: object) -> object:
    return parse_microservice({
        "microservice_name": "m", "microservice_namespace": "t", "virtualization": "ml-model",
        "model": {"name": "tiny", "max_partitions": 3, **model}, "constraints": constraints or []})


def schedule(ms: object, profile: str = "default") -> object:
    return MlScheduler(load_profile(profile)).schedule(GRAPH, NODES, ms, COSTS)


def test_optimal_plan_uses_the_fastest_node_and_explains_the_rest() -> None:
    result = schedule(microservice())
    assert result.schedulable and result.node_ids == ["fast"] and result.positions == []
    assert result.reasons["gone"].startswith("offline")
    assert result.reasons["mid"].startswith("not_selected") and result.reasons["slow"].startswith("not_selected")
    assert result.predicted["latency_ms"] == pytest.approx(result.predicted["stages"][0]["compute_ms"])
    json.dumps(result.explanation)  # JSON-able, as stored by the cluster and returned by the root


def test_baselines_split_over_every_feasible_node() -> None:
    greedy = schedule(microservice(), "amp4ec-baseline")
    balanced = schedule(microservice(), "flops-balanced")
    optimal = schedule(microservice())
    assert len(greedy.node_ids) == 3 and len(balanced.node_ids) == 3
    assert optimal.predicted["latency_ms"] <= min(greedy.predicted["latency_ms"], balanced.predicted["latency_ms"])


def test_impossible_latency_is_unschedulable_with_a_reason_per_node() -> None:
    result = schedule(microservice([{"type": "e2e_latency", "threshold_ms": 1e-6}]))
    assert not result.schedulable and "exceeds the SLA" in result.message
    assert all(result.reasons[n].startswith(("sla_latency", "offline")) for n in ("fast", "mid", "slow", "gone"))


def test_energy_budget_is_checked_against_the_plan() -> None:
    result = schedule(microservice([{"type": "energy", "max_mj_per_inference": 1e-9}]))
    assert not result.schedulable and result.reasons["fast"].startswith(("sla_energy", "energy_budget"))


def test_privacy_pin_puts_stage_zero_on_the_pinned_node_and_input_is_sourced_there() -> None:
    result = schedule(microservice([{"type": "privacy_pin", "label": "camera"}]))
    assert result.schedulable and result.node_ids[0] == "mid" and result.source_node_id == "mid"


def test_battery_floor_filters_a_low_battery_node() -> None:
    result = schedule(microservice([{"type": "battery", "min_percent": 50}]))
    assert result.reasons["slow"].startswith("battery")


def test_source_on_a_slow_uplink_is_paid_for() -> None:
    result = schedule(microservice(source={"node": "mid"}))
    assert result.source_node_id == "mid"
    first = result.predicted["stages"][0]
    assert first["node_id"] == "mid" or first["transfer_in_ms"] > 0


@pytest.mark.parametrize("profile", ["default", "flops-balanced", "amp4ec-baseline"])
def test_every_strategy_honours_the_privacy_pin(profile: str) -> None:
    # the pinned node (mid) is not the fastest: a baseline sorting by speed must still start there
    result = schedule(microservice([{"type": "privacy_pin", "label": "camera"}]), profile)
    assert result.schedulable and result.node_ids[0] == "mid", (profile, result.node_ids, result.message)
