"""A node defends its liveness on a real Mosquitto, and a restarted node is born again.

Somebody else (a stale retained message, a confused tool, the cluster itself) publishes a
retained ``offline`` on a live node's status topic; the node must answer with a retained
``online`` birth whose seq beats it, so neither the cluster nor a late subscriber keeps it
offline. A node restarted under the same name must come back under the same node id with a
larger seq, even though its previous life left an ``offline`` retained.
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from treeline_test_helpers import (
    FakeCluster,
    NodeProcess,
    Observer,
    chain_models,
    node_spawner,
    retained_status,
)

from treeline_common import topics
from treeline_common.messages import NodeStatus, NodeTelemetry, encode

pytestmark = pytest.mark.integration
TELEMETRY_INTERVAL = 0.2


@pytest.fixture(scope="module")
def cluster(mqtt_broker: Any) -> Iterator[FakeCluster]:
    with FakeCluster.start(mqtt_broker, chain_models(seed=3)) as fake:
        yield fake


@pytest.fixture
def spawn(tmp_path: Path, cluster: FakeCluster) -> Iterator[Callable[[str], NodeProcess]]:
    """``spawn(name)`` on ``cluster``: every node started is killed and reaped after the test."""
    with node_spawner(tmp_path, TELEMETRY_INTERVAL) as spawn_node:
        yield lambda name: spawn_node(cluster.url, name)


def _spoof(observer: Observer, node_id: str, seq: int) -> None:
    """Publish a retained ``offline`` for ``node_id`` from the observer's (foreign) client."""
    status = NodeStatus(node_id=node_id, state="offline", seq=seq, ts=0.0)
    observer.client.publish(topics.status(node_id), encode(status), qos=1, retain=True).wait_for_publish(5)


def _online_after(observer: Observer, node: NodeProcess, seq: int) -> NodeStatus:
    return observer.wait_for(topics.status(node.node_id), NodeStatus,
                             lambda s: s.state == "online" and s.seq > seq)


@pytest.mark.parametrize("offset", [1000, 0], ids=["above-our-seq", "our-own-seq"])
def test_spoofed_offline_is_answered_by_a_new_birth_above_it(
        offset: int, observer: Observer, mqtt_broker: Any, spawn: Callable[[str], NodeProcess]) -> None:
    node = spawn(f"spoofed-{offset}")
    birth = observer.wait_for(topics.status(node.node_id), NodeStatus, lambda s: s.state == "online")
    spoofed = birth.seq + offset
    _spoof(observer, node.node_id, spoofed)
    reborn = _online_after(observer, node, spoofed)
    assert reborn.seq > spoofed
    # telemetry moves to the new session's seq; the retained status reads online again
    observer.wait_for(topics.information(node.node_id), NodeTelemetry, lambda t: t.seq == reborn.seq)
    retained = retained_status(mqtt_broker, node.node_id)
    assert retained.state == "online" and retained.seq >= reborn.seq
    # no rebirth loop: a few telemetry periods later the node still holds the same birth
    count = len(observer.seen(topics.information(node.node_id), NodeTelemetry))
    observer.wait_for(topics.information(node.node_id), NodeTelemetry, lambda t: t.seq == reborn.seq
                      and len(observer.messages[topics.information(node.node_id)]) >= count + 5)
    births = [s for s in observer.seen(topics.status(node.node_id), NodeStatus) if s.state == "online"]
    assert max(s.seq for s in births) == reborn.seq and len(births) <= 3, births
    assert node.process.poll() is None


def test_stale_offline_is_overwritten_by_the_current_birth(observer: Observer, mqtt_broker: Any,
                                                           spawn: Callable[[str], NodeProcess]) -> None:
    node = spawn("stale")
    birth = observer.wait_for(topics.status(node.node_id), NodeStatus, lambda s: s.state == "online")
    _spoof(observer, node.node_id, birth.seq - 1)
    # the birth comes again, same seq (our armed will still outranks the stale offline)
    observer.wait_for(topics.status(node.node_id), NodeStatus,
                      lambda s: s.state == "online" and s.seq == birth.seq
                      and len(observer.messages[topics.status(node.node_id)]) > 2)
    retained = retained_status(mqtt_broker, node.node_id)
    assert retained.state == "online" and retained.seq == birth.seq


def test_restart_under_the_same_name_comes_back_with_a_larger_seq(
        cluster: FakeCluster, observer: Observer, spawn: Callable[[str], NodeProcess]) -> None:
    first = spawn("lazarus")
    birth = observer.wait_for(topics.status(first.node_id), NodeStatus, lambda s: s.state == "online")
    first.process.send_signal(signal.SIGTERM)
    assert first.process.wait(10) == 0
    offline = observer.wait_for(topics.status(first.node_id), NodeStatus, lambda s: s.state == "offline")
    assert offline.seq == birth.seq  # retained: the restarted node meets it on subscribe
    del cluster.registrations["lazarus"]
    second = spawn("lazarus")
    again = _online_after(observer, second, offline.seq)
    assert second.node_id == first.node_id and again.node_id == first.node_id
    assert cluster.registrations["lazarus"]["name"] == "lazarus"  # it registered again
    observer.wait_for(topics.information(second.node_id), NodeTelemetry, lambda t: t.seq == again.seq)
