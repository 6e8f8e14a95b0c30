"""The node simulator's pure parts and the cluster's departure hold (no broker, no sleeping)."""

from __future__ import annotations

import onnx
import pytest

from cluster_orchestrator.explanations import EXPLAIN_NODES_KEPT, bounded_explanation, bounded_reasons
from cluster_orchestrator.liveness import (
    DEPARTURE_DEBOUNCE,
    MASS_DEPARTURE_SETTLE,
    MAX_DEPARTURE_HOLD,
    DepartureHold,
    is_mass_departure,
)
from cluster_orchestrator.nodes import NodeRegistry
from cluster_orchestrator.reconcile import Delete, DesiredDeployment, Observed, ObservedNode, Plan, reconcile
from cluster_orchestrator.store import InMemoryClusterStateStore
from ml_scheduler.graph import analyze_model
from model_zoo.tiny import tiny_dag_bytes
from node_engine.simulator import FleetConfig
from node_engine.simulator.profiling import OP_OVERHEAD_MS, synthetic_op_ms
from node_engine.simulator.virtual_node import VirtualNode
from treeline_common.clock import FakeClock
from treeline_common.jobs import JobStatus, Placement, StagePlacement
from treeline_common.messages import DeleteCommand, DeployCommand, NodeStatus, NodeTelemetry, stage_key
from treeline_common.profiles import get_profile


def vnode(profile: str = "rpi4") -> VirtualNode:
    node = VirtualNode("sim-rpi4-1", get_profile(profile), 0, first_seq=1000)
    node.node_id = "node-1"
    return node


def deploy(dep: str, stage: int, generation: int) -> DeployCommand:
    return DeployCommand(dep, stage, "http://x/a", "ab" * 32, ["in"], ["out"], generation=generation)


# ---------------------------------------------------------------- virtual node


def test_deploy_holds_the_stage_and_answers_ready_and_telemetry_lists_it() -> None:
    node = vnode()
    state = node.deploy(deploy("d", 1, 2), now=5.0)
    assert (state.state, state.stage, state.generation, state.node_id) == ("READY", 1, 2, "node-1")
    assert node.telemetry(6.0).stages == [stage_key("d", 1, 2)]
    assert node.deploy(deploy("d", 1, 2), now=7.0).state == "READY"  # idempotent
    assert node.stage_keys() == [stage_key("d", 1, 2)]


@pytest.mark.parametrize("command, left, removed", [
    (DeleteCommand("d"), [], [(0, 1), (0, 2), (1, 2)]),
    (DeleteCommand("d", generation=2), [stage_key("d", 0, 1)], [(0, 2), (1, 2)]),
    (DeleteCommand("d", stage=0, generation=1), [stage_key("d", 0, 2), stage_key("d", 1, 2)], [(0, 1)]),
    (DeleteCommand("d", stage=0), [stage_key("d", 1, 2)], [(0, 1), (0, 2)]),
    (DeleteCommand("d", stage=7, generation=3), None, [(7, 3)]),  # not held: still REMOVED
    (DeleteCommand("other"), None, []),
])
def test_delete_selects_like_a_real_node(command: DeleteCommand, left: list[str] | None,
                                         removed: list[tuple[int, int]]) -> None:
    node = vnode()
    for stage, generation in ((0, 1), (0, 2), (1, 2)):
        node.deploy(deploy("d", stage, generation), now=1.0)
    before = node.stage_keys()
    states = node.delete(command, now=2.0)
    assert sorted((s.stage, s.generation) for s in states) == sorted(removed)
    assert all(s.state == "REMOVED" for s in states)
    assert node.stage_keys() == (before if left is None else sorted(left))


def test_every_connection_attempt_gets_a_larger_seq_and_the_birth_carries_it() -> None:
    node = vnode()
    first, second = node.next_will(1.0), node.next_will(2.0)
    assert (first.state, second.seq) == ("offline", first.seq + 1)
    assert node.birth(3.0) == NodeStatus("node-1", "online", second.seq, 3.0)
    assert node.telemetry(4.0).seq == second.seq


def test_registration_declares_a_synthetic_device_class_and_the_profile_figures() -> None:
    body = vnode("jetson-nano").registration_body("tcp://192.0.2.1:10000")
    assert body["device_class"] == "sim-jetson-nano" and body["emulated"] is True
    assert body["speed_factor"] == 0.5 and body["arch"] == "aarch64" and "simulated" in body["labels"]


def test_synthetic_op_times_follow_flops_and_the_speed_factor() -> None:
    graph = analyze_model(onnx.load_model_from_string(tiny_dag_bytes(0)))
    fast, slow = synthetic_op_ms(graph, 1.0), synthetic_op_ms(graph, 0.25)
    assert set(fast) == {op.name for op in graph.ops}
    heavy = max(graph.ops, key=lambda op: op.flops)
    flop_part = fast[heavy.name] - OP_OVERHEAD_MS
    assert slow[heavy.name] - OP_OVERHEAD_MS == pytest.approx(4 * flop_part, rel=1e-3)
    assert fast[heavy.name] > OP_OVERHEAD_MS


@pytest.mark.parametrize("kwargs", [{"mode": "bogus"}, {"profiles": ("toaster",)}, {"nodes": -1},
                                    {"telemetry_interval": 0.0}, {"jitter": 1.0}])
def test_fleet_config_refuses_bad_settings(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        FleetConfig("http://127.0.0.1:1", **kwargs)  # type: ignore[arg-type]


# ---------------------------------------------------------------- departure hold


@pytest.mark.parametrize("departed, online_before, mass", [
    (1, 1, False), (1, 3, False), (2, 3, True), (2, 4, False), (4, 1000, False), (5, 1000, True),
])
def test_mass_departure_rule(departed: int, online_before: int, mass: bool) -> None:
    assert is_mass_departure(departed, online_before) is mass


def test_one_departure_holds_plans_for_the_debounce_only() -> None:
    hold = DepartureHold()
    assert hold.held_until(10.0) is None
    hold.departed(10.0, online_before=3)
    assert hold.held_until(10.0) == pytest.approx(10.0 + DEPARTURE_DEBOUNCE)
    assert hold.held_until(10.0 + DEPARTURE_DEBOUNCE) is None


def test_a_mass_departure_holds_plans_until_it_settles_and_never_past_the_cap() -> None:
    hold = DepartureHold()
    for i in range(1000):  # 1,000 wills within half a second
        hold.departed(100.0 + i * 0.0005, online_before=1000 - i)
    last = 100.0 + 999 * 0.0005
    assert hold.mass and hold.held_until(last + 0.5) == pytest.approx(last + MASS_DEPARTURE_SETTLE)
    assert hold.held_until(last + MASS_DEPARTURE_SETTLE) is None
    trickle = DepartureHold()
    for i in range(100):  # one departure every 0.5 s: never quiet for a second
        trickle.departed(i * 0.5, online_before=200)
    assert trickle.held_until(49.5) is None and MAX_DEPARTURE_HOLD < 49.5


def test_the_registry_marks_every_node_offline_at_once_and_holds_plans() -> None:
    clock = FakeClock(1000.0)
    registry = NodeRegistry(InMemoryClusterStateStore(), clock, heartbeat_timeout=6.0)
    ids = []
    for i in range(20):
        doc, _ = registry.register({"name": f"n{i}", "profile": "rpi4", "arch": "aarch64", "cpu_count": 4,
                                    "memory_limit_mb": 4096, "speed_factor": 0.25,
                                    "data_endpoint": f"tcp://192.0.2.1:{i + 1}"})
        registry.on_status(doc["node_id"], NodeStatus(doc["node_id"], "online", 5, clock.now()))
        ids.append(doc["node_id"])
    clock.advance(1.0)
    flips = [registry.on_status(n, NodeStatus(n, "offline", 5, clock.now())) for n in ids]
    assert flips == [(True, False)] * 20
    assert not any(d["online"] for d in registry.list_nodes())
    assert registry.plans_held_until(clock.now()) == pytest.approx(clock.now() + MASS_DEPARTURE_SETTLE)
    clock.advance(MASS_DEPARTURE_SETTLE)
    assert registry.plans_held_until(clock.now()) is None


def test_listed_nodes_are_copies_of_the_registry_documents() -> None:
    registry = NodeRegistry(InMemoryClusterStateStore(), FakeClock(1.0), heartbeat_timeout=6.0)
    registry.register({"name": "n", "profile": "rpi4", "arch": "aarch64", "cpu_count": 4,
                       "memory_limit_mb": 4096, "speed_factor": 0.25, "data_endpoint": "tcp://192.0.2.1:1"})
    [listed] = registry.list_nodes()
    listed["online"] = True
    listed["name"] = "changed"
    assert registry.list_nodes()[0]["name"] == "n" and not registry.list_nodes()[0]["online"]


def test_held_plans_are_not_emitted_but_deletes_go_on() -> None:
    stages = (StagePlacement(index=0, node_id="a", endpoint="tcp://a", stage_key=stage_key("d", 0, 1)),)
    want = DesiredDeployment("d", JobStatus.RUNNING, placement=Placement("d", 1, stages), placed_at=0.0,
                             considered=frozenset({"a", "b"}))
    nodes = {"a": ObservedNode("a", False), "b": ObservedNode("b", True, frozenset({"x/0/0"}), 10.0)}
    free = reconcile({"d": want}, Observed(nodes), 20.0)
    held = reconcile({"d": want}, Observed(nodes, plans_held=True), 20.0)
    assert any(isinstance(a, Plan) for a in free)
    assert not any(isinstance(a, Plan) for a in held)
    assert any(isinstance(a, Delete) for a in held)


# ---------------------------------------------------------------- bounded stored explanations


def test_a_large_explanation_is_stored_bounded_with_counts() -> None:
    scores = {f"n{i:04d}": {"total": 100.0 - i * 0.01, "by_plugin": {}} for i in range(1000)}
    filtered = {f"f{i:03d}": {"plugin": "memory", "code": "too-small", "status": "x", "message": "m"}
                for i in range(200)}
    explanation = {"profile": "default", "scores": scores, "filtered": filtered, "shortlist": ["n0500"]}
    stored = bounded_explanation(explanation, ["n0999"])
    assert list(stored["scores"])[:EXPLAIN_NODES_KEPT] == list(scores)[:EXPLAIN_NODES_KEPT]
    assert {"n0500", "n0999"} <= set(stored["scores"])  # the shortlist and the chosen stay
    assert stored["filtered_counts"] == {"memory/too-small": 200}
    assert stored["omitted"] == {"scores": 1000 - len(stored["scores"]), "filtered": 200 - EXPLAIN_NODES_KEPT}
    small = {"scores": dict(list(scores.items())[:3]), "filtered": {}, "shortlist": []}
    assert bounded_explanation(small, []) is small
    reasons = bounded_reasons({f"f{i:03d}": "no memory" for i in range(100)})
    assert len(reasons) == EXPLAIN_NODES_KEPT + 1 and "68 more" in reasons["..."]


def test_a_fleet_silenced_at_once_is_held_although_its_heartbeats_were_spread() -> None:
    clock = FakeClock(990.0)
    registry = NodeRegistry(InMemoryClusterStateStore(), clock, heartbeat_timeout=6.0)
    for i in range(40):  # telemetry spread over a 2 s interval, then everybody silent at 1000 s
        doc, _ = registry.register({"name": f"n{i}", "profile": "rpi4", "arch": "aarch64", "cpu_count": 4,
                                    "memory_limit_mb": 4096, "speed_factor": 0.25,
                                    "data_endpoint": f"tcp://192.0.2.1:{i + 1}"})
        clock.advance(998.0 + i * 0.05 - clock.now())
        registry.on_telemetry(doc["node_id"], NodeTelemetry(
            node_id=doc["node_id"], ts=clock.now(), cpu_percent=5.0, cpu_count=4, memory_percent=40.0,
            memory_total_mb=4096, memory_available_mb=3000, memory_limit_mb=4096))
    flipped = []
    for step in range(1, 9):  # sweeps every 0.5 s while the first quarter times out, then the next...
        clock.advance(1004.0 + step * 0.5 - clock.now())
        flipped += registry.sweep()
    assert flipped == []  # held as a broker fault, not declared dead a quarter at a time
    clock.advance(1004.5 + 3 * 6.0 + 0.1 - clock.now())  # held from the first timeout for 3 timeouts
    assert len(registry.sweep()) == 40
