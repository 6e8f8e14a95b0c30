"""Emulated links end to end: real node engine processes, real Mosquitto, real onnxruntime.

An ``rpi4`` node (the data's source) serves a relay stage deployed with ``relay=True``; a
``server`` node runs the model. A request entering on the rpi4 must pay the rpi4's uplink
for the raw input (``5 ms + bytes / (50 Mbit/s * 125)``) and still get the model's exact
answer. A stand-in cluster (Flask) answers registration and serves the artifact; the test
plays the cluster's MQTT side.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterator
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from treeline_common import topics
from treeline_common.messages import DeployCommand, NextStage, StageState, encode
from treeline_common.profiles import get_profile
from treeline_test_helpers import DEADLINE, FakeCluster, Observer, onnx_bytes, running_nodes

from node_engine.data_plane.client import TensorClient
from node_engine.emulation import link_delay_ms

pytestmark = pytest.mark.integration
WIDTH = 62_500  # input floats: 250,000 bytes -> 5 + 40 = 45 ms on the rpi4 uplink


def _model() -> bytes:
    rng = np.random.default_rng(11)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, WIDTH])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    w = numpy_helper.from_array((rng.standard_normal((WIDTH, 4)) * 0.01).astype(np.float32), "W")
    b = numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "B")
    nodes = [helper.make_node("MatMul", ["x", "W"], ["m"]), helper.make_node("Add", ["m", "B"], ["y"])]
    return onnx_bytes(nodes, [x], [y], [w, b])


@pytest.fixture(scope="module")
def cluster(mqtt_broker: Any) -> Iterator[FakeCluster]:
    fake = FakeCluster.start(mqtt_broker, {"model": _model()}, cluster_id="c")
    yield fake
    fake.shutdown()


@pytest.fixture(scope="module")
def nodes(cluster: FakeCluster, observer: Observer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    specs = (("cam", "rpi4"), ("big", "server"))
    with running_nodes(cluster.url, specs, tmp_path_factory.mktemp("links"), observer, telemetry_interval=0.5):
        yield None


def _ready(observer: Observer, node_id: str, stage: int) -> StageState:
    return observer.wait_for(topics.job(node_id), StageState,
                             lambda s: s.deployment_id == "links" and s.stage == stage and s.state == "READY")


def test_registration_carries_link_figures(nodes: None, cluster: FakeCluster) -> None:
    cam = cluster.registrations["cam"]
    assert (cam["uplink_mbps"], cam["link_rtt_ms"], cam["device_class"]) == (50.0, 5.0, "rpi4")
    assert (cam["power_w"], cam["radio_nj_per_byte"]) == (6.0, 50.0)
    assert cluster.registrations["big"]["device_class"] == "server"


def test_relay_on_rpi4_pays_its_uplink_for_the_raw_input(nodes: None, cluster: FakeCluster,
                                                         observer: Observer) -> None:
    cam_endpoint = cluster.registrations["cam"]["data_endpoint"]
    big_endpoint = cluster.registrations["big"]["data_endpoint"]
    sha = cluster.sha("model")
    observer.publish(topics.control_deploy("node-big"), encode(DeployCommand(
        deployment_id="links", stage=1, artifact_url=f"{cluster.url}/artifacts/model", sha256=sha,
        inputs=["x"], outputs=["y"], generation=1)))
    observer.publish(topics.control_deploy("node-cam"), encode(DeployCommand(
        deployment_id="links", stage=0, artifact_url="", sha256="", inputs=["x"], outputs=["x"],
        next=NextStage("node-big", big_endpoint, "links/1/1"), generation=1, relay=True)))
    _ready(observer, "node-big", 1)
    _ready(observer, "node-cam", 0)
    cam_states = [s.state for s in observer.seen(topics.job("node-cam"), StageState)
                  if s.deployment_id == "links"]
    assert "DOWNLOADING" not in cam_states and "LOADING" not in cam_states  # a relay loads nothing

    rng = np.random.default_rng(5)
    inputs = [{"x": rng.standard_normal((1, WIDTH)).astype(np.float32)} for _ in range(6)]
    rpi4 = get_profile("rpi4")
    expected_ms = link_delay_ms(inputs[0]["x"].nbytes, rpi4.uplink_mbps, rpi4.link_rtt_ms)
    assert expected_ms == pytest.approx(45.0)
    reference = ort.InferenceSession(cluster.artifacts["model"], providers=["CPUExecutionProvider"])
    with TensorClient(cam_endpoint) as via_cam, TensorClient(big_endpoint) as direct:
        relayed = via_cam.infer_many("links/1/0", inputs, max_in_flight=1, timeout=DEADLINE)
        straight = direct.infer_many("links/1/1", inputs, max_in_flight=1, timeout=DEADLINE)
    for item, (outputs, timings, latency_s) in zip(inputs, relayed):
        np.testing.assert_allclose(outputs["y"], reference.run(["y"], item)[0], rtol=1e-4, atol=1e-4)
        assert set(timings) == {"links/1/0", "links/1/0->link", "links/1/1"}
        assert expected_ms <= timings["links/1/0->link"] < expected_ms + 60.0
        assert latency_s * 1000.0 >= expected_ms
    for item, (outputs, timings, _) in zip(inputs, straight):
        np.testing.assert_allclose(outputs["y"], reference.run(["y"], item)[0], rtol=1e-4, atol=1e-4)
        assert set(timings) == {"links/1/1"}  # the server node is the last stage: nothing to ship
    extra_ms = (statistics.median(r[2] for r in relayed) - statistics.median(r[2] for r in straight)) * 1000.0
    assert extra_ms >= 0.9 * expected_ms  # the relay path costs the rpi4 uplink on top
