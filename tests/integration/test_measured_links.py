"""Measured links end to end: real node engine processes, real Mosquitto, real onnxruntime.

Two emulated nodes: ``cam`` (``rpi4``: uplink 50 Mbit/s, RTT 5 ms) serves a relay stage that
forwards to ``hub`` (``jetson-nano``), which runs the model. Once ``cam`` is routed to ``hub`` it
probes the link (deploy time) and real requests add passive samples; its telemetry must carry
both readings, the probe agreeing with the emulated link within 10 % (the issue's
``link_estimate_error`` goal; passive figures within 20 %), and the cluster's planning path
must turn them into the cost model's figure for the ``cam -> hub`` transfer, marked measured.
A stand-in cluster (Flask) answers registration and serves the artifact; the test plays the
cluster's MQTT side.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper
from treeline_test_helpers import DEADLINE, FakeCluster, Observer, onnx_bytes, running_nodes

from cluster_orchestrator.planning import node_view_fields
from ml_scheduler.costmodel.links import FIGURES_PAIR, link_explanation, link_matrices
from ml_scheduler.snapshot import LINK_MEASURED, NodeView
from node_engine.data_plane.client import TensorClient
from treeline_common import topics
from treeline_common.messages import DeployCommand, NextStage, NodeTelemetry, StageState, encode
from treeline_common.profiles import get_profile

pytestmark = pytest.mark.integration
WIDTH = 32_768  # input floats: 131,072 bytes
TOLERANCE = 0.10  # probes: the link_estimate_error goal
PASSIVE_TOLERANCE = 0.20  # passive samples also carry the data plane's own handling (~2 ms a forward here)


def _model() -> bytes:
    rng = np.random.default_rng(3)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, WIDTH])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])
    w = numpy_helper.from_array((rng.standard_normal((WIDTH, 2)) * 0.01).astype(np.float32), "W")
    return onnx_bytes([helper.make_node("MatMul", ["x", "W"], ["y"])], [x], [y], [w])


@pytest.fixture(scope="module")
def cluster(mqtt_broker: Any) -> Iterator[FakeCluster]:
    fake = FakeCluster.start(mqtt_broker, {"model": _model()}, cluster_id="c")
    yield fake
    fake.shutdown()


@pytest.fixture(scope="module")
def deployed(cluster: FakeCluster, observer: Observer,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    specs = (("cam", "rpi4"), ("hub", "jetson-nano"))
    tmp = tmp_path_factory.mktemp("measured")
    with running_nodes(cluster.url, specs, tmp, observer, telemetry_interval=0.3):
        hub_endpoint = cluster.registrations["hub"]["data_endpoint"]
        observer.publish(topics.control_deploy("node-hub"), encode(DeployCommand(
            deployment_id="ml", stage=1, artifact_url=f"{cluster.url}/artifacts/model",
            sha256=cluster.sha("model"), inputs=["x"], outputs=["y"], generation=1)))
        observer.wait_for(topics.job("node-hub"), StageState, lambda s: s.stage == 1 and s.state == "READY")
        observer.publish(topics.control_deploy("node-cam"), encode(DeployCommand(
            deployment_id="ml", stage=0, artifact_url="", sha256="", inputs=["x"], outputs=["x"],
            next=NextStage("node-hub", hub_endpoint, "ml/1/1"), generation=1, relay=True)))
        observer.wait_for(topics.job("node-cam"), StageState, lambda s: s.stage == 0 and s.state == "READY")
        yield None


def _with_link(observer: Observer, source: str) -> NodeTelemetry:
    def has(t: NodeTelemetry) -> bool:
        return any(r.source == source and r.peer == "node-hub" for r in t.links or ())
    found: NodeTelemetry = observer.wait_for(topics.information("node-cam"), NodeTelemetry, has, DEADLINE)
    return found


def _error(measured: float, declared: float) -> float:
    return abs(measured - declared) / declared


def test_probe_at_deploy_time_agrees_with_the_emulated_link(deployed: None, observer: Observer) -> None:
    rpi4 = get_profile("rpi4")
    reading = next(r for r in _with_link(observer, "probe").links or () if r.source == "probe")
    # the benchmark holds the 10 % goal on a quiet host; here a busy 2-core CI host may add up to
    # 1 ms of scheduling to the best ping and slow a burst: still far from no emulation (~0.2 ms,
    # loopback speed) or a doubled delay
    assert rpi4.link_rtt_ms * (1 - TOLERANCE) <= reading.rtt_ms <= rpi4.link_rtt_ms * (1 + TOLERANCE) + 1.0, reading
    assert _error(reading.mbps, rpi4.uplink_mbps) <= 2 * TOLERANCE, reading
    assert reading.samples >= 2


def test_real_traffic_gives_passive_figures_and_they_reach_the_cost_model(
        deployed: None, cluster: FakeCluster, observer: Observer) -> None:
    rng = np.random.default_rng(7)
    inputs = [{"x": rng.standard_normal((1, WIDTH)).astype(np.float32)} for _ in range(5)]
    with TensorClient(cluster.registrations["cam"]["data_endpoint"]) as client:
        client.infer_many("ml/1/0", inputs, max_in_flight=1, timeout=DEADLINE)
    telemetry = _with_link(observer, "passive")
    rpi4 = get_profile("rpi4")
    passive = next(r for r in telemetry.links or () if r.source == "passive")
    assert passive.samples >= 1
    assert _error(passive.mbps, rpi4.uplink_mbps) <= PASSIVE_TOLERANCE, passive

    # the cluster's planning path: node documents (registration + stored telemetry) -> NodeView -> costs
    docs = [{**cluster.registrations[name], "node_id": f"node-{name}", "name": name, "online": True,
             "telemetry": dataclasses.asdict(telemetry) if name == "cam" else None}
            for name in ("cam", "hub")]
    views = [NodeView(**node_view_fields(doc)) for doc in docs]
    assert views[0].link_figures == LINK_MEASURED and views[1].link_figures == "declared"
    rtt, bandwidth = link_matrices(views, np.array([v.uplink_mbps for v in views]),
                                   np.array([v.link_rtt_ms for v in views]))
    probe = next(r for r in telemetry.links or () if r.source == "probe")
    assert rtt[0, 1] == pytest.approx(probe.rtt_ms) and bandwidth[0, 1] == pytest.approx(probe.mbps * 125.0)
    assert _error(bandwidth[0, 1] / 125.0, rpi4.uplink_mbps) <= TOLERANCE
    hop = link_explanation(views, ["node-cam", "node-hub"])[0]
    assert hop["figures"] == FIGURES_PAIR
