"""Liveness rules and the node registry, driven by a FakeClock (no broker, no sleeping)."""

from __future__ import annotations

import pytest

from cluster_orchestrator.liveness import accepts_status, backoff_delay, heartbeat_timeout, is_online
from cluster_orchestrator.nodes import NodeRegistry
from cluster_orchestrator.store import InMemoryClusterStateStore
from treeline_common.clock import FakeClock
from treeline_common.messages import NodeStatus, NodeTelemetry

REG = {"name": "n1", "profile": "rpi4", "emulated": True, "arch": "aarch64", "cpu_count": 4,
       "memory_limit_mb": 4096, "speed_factor": 0.25, "accelerators": [], "battery": {"percent": 80.0},
       "labels": ["rpi"], "data_endpoint": "tcp://127.0.0.1:7001"}


def telemetry(node_id: str, ts: float) -> NodeTelemetry:
    return NodeTelemetry(node_id=node_id, ts=ts, cpu_percent=5.0, cpu_count=4, memory_percent=40.0,
                         memory_total_mb=8000, memory_available_mb=3000, memory_limit_mb=4096)


@pytest.mark.parametrize("node, now, expected", [
    ({"last_seen": None}, 100.0, False),
    ({"last_seen": 100.0}, 106.0, True),        # exactly at the timeout: still online
    ({"last_seen": 100.0}, 106.1, False),       # 3 missed heartbeats of 2 s
    ({"last_seen": 100.0, "status_state": "offline"}, 100.0, False),  # last will wins over fresh telemetry
    ({"last_seen": 100.0, "status_state": "online"}, 101.0, True),
])
def test_is_online(node: dict, now: float, expected: bool) -> None:
    assert is_online(node, now, heartbeat_timeout(2.0, 3)) is expected


@pytest.mark.parametrize("node, status, expected", [
    ({"registered_at": 50.0}, NodeStatus("n", "offline", seq=1, ts=40.0), False),  # retained, previous life
    ({"registered_at": 50.0}, NodeStatus("n", "offline", seq=1, ts=60.0), True),
    ({"status_seq": 3, "status_state": "online"}, NodeStatus("n", "offline", seq=2), False),  # stale will
    # this birth's will
    ({"status_seq": 3, "status_state": "online"}, NodeStatus("n", "offline", seq=3), True),
    ({"status_seq": 3, "status_state": "offline"}, NodeStatus("n", "online", seq=3), False),  # replayed birth
    ({"status_seq": 3, "status_state": "offline"}, NodeStatus("n", "online", seq=4), True),  # reconnect
])
def test_accepts_status(node: dict, status: NodeStatus, expected: bool) -> None:
    assert accepts_status(node, status) is expected


def test_backoff_grows_and_is_capped() -> None:
    assert [backoff_delay(i, base=0.5, cap=4.0) for i in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]


def test_registry_online_after_telemetry_offline_after_missed_heartbeats() -> None:
    clock = FakeClock()
    registry = NodeRegistry(InMemoryClusterStateStore(), clock, heartbeat_timeout(2.0, 3))
    doc, created = registry.register(REG)
    assert created and not registry.list_nodes()[0]["online"]
    assert registry.on_telemetry(doc["node_id"], telemetry(doc["node_id"], clock.now())) == (False, True)
    clock.advance(5.9)
    assert registry.sweep() == []
    clock.advance(0.2)
    assert registry.sweep() == [(doc["node_id"], False)]
    assert registry.sweep() == []  # a flip is reported once
    assert not registry.list_nodes()[0]["online"]


def test_registry_last_will_then_new_birth() -> None:
    clock = FakeClock()
    registry = NodeRegistry(InMemoryClusterStateStore(), clock, 6.0)
    node_id = registry.register(REG)[0]["node_id"]
    clock.advance(1)
    assert registry.on_status(node_id, NodeStatus(node_id, "online", seq=1, ts=clock.now())) == (False, True)
    assert registry.on_status(node_id, NodeStatus(node_id, "offline", seq=1, ts=clock.now())) == (True, False)
    # telemetry straggling after the will does not resurrect it
    assert registry.on_telemetry(node_id, telemetry(node_id, clock.now())) == (False, False)
    assert registry.on_status(node_id, NodeStatus(node_id, "online", seq=2, ts=clock.now())) == (False, True)


def test_reregistration_is_idempotent_by_name_and_forgets_old_will() -> None:
    clock = FakeClock()
    registry = NodeRegistry(InMemoryClusterStateStore(), clock, 6.0)
    first = registry.register(REG)[0]
    registry.on_status(first["node_id"], NodeStatus(first["node_id"], "offline", seq=7, ts=clock.now()))
    clock.advance(1)
    again, created = registry.register(dict(REG, speed_factor=0.5))
    assert not created and again["node_id"] == first["node_id"] and again["speed_factor"] == 0.5
    # the retained will of the previous life (stamped before re-registration) is ignored
    registry.on_status(first["node_id"], NodeStatus(first["node_id"], "offline", seq=7, ts=clock.now() - 1))
    assert registry.on_status(first["node_id"], NodeStatus(first["node_id"], "online", seq=1,
                                                           ts=clock.now())) == (False, True)


def test_messages_from_unregistered_nodes_are_dropped() -> None:
    registry = NodeRegistry(InMemoryClusterStateStore(), FakeClock(), 6.0)
    assert registry.on_telemetry("ghost", telemetry("ghost", 0.0)) is None
    assert registry.list_nodes() == []


def _fleet(clock: FakeClock, names: list[str]) -> tuple[NodeRegistry, list[str]]:
    registry = NodeRegistry(InMemoryClusterStateStore(), clock, 6.0, mass_silence_hold=3.0)
    ids = []
    for name in names:
        node_id = registry.register(dict(REG, name=name))[0]["node_id"]
        registry.on_telemetry(node_id, telemetry(node_id, clock.now()))
        ids.append(node_id)
    return registry, ids


def test_silence_while_the_broker_is_unreachable_kills_nobody() -> None:
    clock = FakeClock()
    registry, ids = _fleet(clock, ["a"])
    clock.advance(60)
    assert registry.sweep(bus_connected=False) == []
    registry.grant_grace()  # the broker came back: the outage is not missed heartbeats
    assert registry.sweep(bus_connected=True) == []
    clock.advance(6.1)  # ... but a node that stays silent afterwards is dead
    assert registry.sweep() == [(ids[0], False)]


def test_mass_silence_is_held_then_judged() -> None:
    clock = FakeClock()
    registry, ids = _fleet(clock, ["a", "b", "c"])
    clock.advance(6.1)
    assert registry.sweep() == []  # all three silent at once: a broker or network fault, held
    clock.advance(17.0)
    assert registry.sweep() == []  # still within 3 x the heartbeat timeout of holding
    clock.advance(1.1)
    assert sorted(registry.sweep()) == sorted((i, False) for i in ids)


def test_one_silent_node_among_many_is_declared_dead_at_once() -> None:
    clock = FakeClock()
    registry, ids = _fleet(clock, ["a", "b", "c"])
    clock.advance(4.0)
    for node_id in ids[1:]:
        registry.on_telemetry(node_id, telemetry(node_id, clock.now()))
    clock.advance(2.1)
    assert registry.sweep() == [(ids[0], False)]


def test_telemetry_of_a_newer_birth_overrides_a_foreign_offline() -> None:
    clock = FakeClock()
    registry = NodeRegistry(InMemoryClusterStateStore(), clock, 6.0)
    node_id = registry.register(REG)[0]["node_id"]
    registry.on_status(node_id, NodeStatus(node_id, "online", seq=5, ts=clock.now()))
    # somebody publishes a retained offline with the node's seq (or a stale one): accepted as a will
    assert registry.on_status(node_id, NodeStatus(node_id, "offline", seq=5, ts=clock.now())) == (True, False)
    # telemetry of the same birth does not revive it (a straggler sent before a crash) ...
    from dataclasses import replace
    assert registry.on_telemetry(node_id, replace(telemetry(node_id, clock.now()), seq=5)) == (False, False)
    # ... telemetry of a newer birth does
    assert registry.on_telemetry(node_id, replace(telemetry(node_id, clock.now()), seq=6)) == (False, True)
    assert registry.list_nodes()[0]["online"]


def test_a_live_name_is_not_taken_over_by_another_process() -> None:
    from treeline_common.errors import Conflict

    clock = FakeClock()
    registry = NodeRegistry(InMemoryClusterStateStore(), clock, 6.0)
    node_id = registry.register(dict(REG, instance_id="first"))[0]["node_id"]
    registry.on_telemetry(node_id, telemetry(node_id, clock.now()))
    with pytest.raises(Conflict, match="held by another live node"):
        registry.register(dict(REG, instance_id="second"))
    assert registry.register(dict(REG, instance_id="first"))[0]["node_id"] == node_id  # its own re-registration
    registry.on_telemetry(node_id, telemetry(node_id, clock.now()))
    clock.advance(6.1)
    registry.sweep()  # the first process died: the name is free for a restarted one
    doc, created = registry.register(dict(REG, instance_id="second"))
    assert doc["node_id"] == node_id and not created


def test_after_a_cluster_restart_a_new_process_may_take_a_name_only_the_store_remembers() -> None:
    clock = FakeClock()
    store = InMemoryClusterStateStore()
    before = NodeRegistry(store, clock, 6.0)
    node_id = before.register(dict(REG, instance_id="old"))[0]["node_id"]
    before.on_telemetry(node_id, telemetry(node_id, clock.now()))
    before.flush()
    after = NodeRegistry(store, clock, 6.0)  # the cluster restarted: the node is online by the grace only
    after.grant_grace()
    assert after.list_nodes()[0]["online"]
    doc, created = after.register(dict(REG, instance_id="new"))
    assert doc["node_id"] == node_id and not created


def test_a_live_node_that_re_registers_stays_online_and_a_dead_one_waits_for_its_birth() -> None:
    clock = FakeClock()
    registry = NodeRegistry(InMemoryClusterStateStore(), clock, 6.0)
    node_id = registry.register(REG)[0]["node_id"]
    registry.on_telemetry(node_id, telemetry(node_id, clock.now()))
    doc, _ = registry.register(REG)  # its process restarted and called us: it is alive
    assert doc["online"] and doc["status_seq"] is None
    registry.on_status(node_id, NodeStatus(node_id, "offline", seq=1, ts=clock.now()))
    doc, _ = registry.register(REG)  # it died; back online only with its birth (when it listens)
    assert not doc["online"]
    assert registry.on_status(node_id, NodeStatus(node_id, "online", seq=2, ts=clock.now())) == (False, True)
