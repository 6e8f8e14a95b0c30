"""Telemetry of real node engine processes on loopback, over a real broker: what each source
says on this host and how often a sample goes out.

The host running the tests is what a native node reports on: its battery (none on our
machines: checked, else the battery assertion is skipped), its sources map, and a sample about
every 2 s. An emulated node beside it still reports its profile's battery, marked emulated.
"""

from __future__ import annotations

import itertools
import statistics
from collections.abc import Iterator
from typing import Any

import pytest
from treeline_test_helpers import FakeCluster, NodeProcess, Observer, chain_models, running_nodes

from node_engine.sources import SOURCES, SourceContext
from node_engine.sources.battery import BatterySource
from treeline_common import topics
from treeline_common.messages import Battery, NodeTelemetry
from treeline_common.netutil import poll_until

pytestmark = pytest.mark.integration
INTERVAL = 2.0
SAMPLES = 4


@pytest.fixture(scope="module")
def nodes(mqtt_broker: Any, observer: Observer,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[NodeProcess, NodeProcess]]:
    with FakeCluster.start(mqtt_broker, chain_models(seed=3)) as cluster, running_nodes(
            cluster.url, (("native-t", "native"), ("rpi4-t", "rpi4")), tmp_path_factory.mktemp("nodes"),
            observer, INTERVAL) as started:
        yield started[0], started[1]


def samples(observer: Observer, node: NodeProcess, count: int) -> list[NodeTelemetry]:
    topic = topics.information(node.node_id)
    poll_until(lambda: len(observer.seen(topic, NodeTelemetry)) >= count, timeout=count * INTERVAL + 20,
               what=f"{count} telemetry samples from {node.name}")
    return observer.seen(topic, NodeTelemetry)


def test_native_node_reports_its_sources_and_no_battery(nodes: tuple[NodeProcess, NodeProcess],
                                                       observer: Observer) -> None:
    native, _ = nodes
    sample = samples(observer, native, 1)[-1]
    assert not sample.emulated
    assert set(sample.sources) == set(SOURCES)
    assert sample.sources["cpu"] == sample.sources["memory"] == sample.sources["onnxruntime"] == "ok"
    assert len(sample.cpu_per_core) == sample.cpu_count
    assert all(a.kind != "cpu" and not a.emulated for a in sample.accelerators)
    assert sample.power is not None
    assert sample.power.estimated == (sample.sources["power"] != "ok")
    host_battery = BatterySource(SourceContext())
    if host_battery.probe():
        pytest.skip("this host has a battery: the battery-null check needs one without")
    assert sample.battery is None and sample.sources["battery"] == "absent"


def test_telemetry_cadence(nodes: tuple[NodeProcess, NodeProcess], observer: Observer) -> None:
    native, _ = nodes
    got = samples(observer, native, SAMPLES)
    gaps = [b.ts - a.ts for a, b in itertools.pairwise(got)]
    assert all(1.8 <= gap <= 3.5 for gap in gaps), gaps
    assert 1.9 <= statistics.median(gaps) <= 2.5, gaps


def test_emulated_node_keeps_its_profile_battery(nodes: tuple[NodeProcess, NodeProcess],
                                                 observer: Observer) -> None:
    _, rpi4 = nodes
    sample = samples(observer, rpi4, 1)[-1]
    assert sample.emulated and sample.profile == "rpi4"
    # the profile's charge, idle (no stage drew from it), and known to be off the charger
    assert sample.battery == Battery(percent=80.0, charging=False, plugged=False, emulated=True)
    assert sample.sources["battery"] == "emulated" and sample.sources["cpu"] == "ok"
    assert sample.power is not None and sample.power.estimated and sample.power.source == "profile"
