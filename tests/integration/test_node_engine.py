"""Node engines as real processes: real Mosquitto, real onnxruntime, real sockets on loopback.

A small Flask app stands in for the cluster (``POST /api/node/register``) and serves the
partition artifacts; the test plays the cluster's MQTT side with its own paho client.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from treeline_test_helpers import (
    DEADLINE,
    FakeCluster,
    NodeProcess,
    Observer,
    chain_models,
    node_spawner,
    retained_status,
    running_nodes,
    serve_cluster,
)

from node_engine.data_plane.client import TensorClient
from treeline_common import topics
from treeline_common.messages import (
    DeleteCommand,
    DeployCommand,
    NextStage,
    NodeStatus,
    NodeTelemetry,
    StageState,
    StageStats,
    encode,
    stage_key,
)
from treeline_common.netutil import free_port, poll_until

pytestmark = pytest.mark.integration
TELEMETRY_INTERVAL = 0.3


@pytest.fixture(scope="module")
def cluster(mqtt_broker: Any) -> Iterator[FakeCluster]:
    with FakeCluster.start(mqtt_broker, chain_models(seed=7)) as fake:
        yield fake


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., NodeProcess]]:
    """``spawn(cluster_url, name, profile)``: every node started is killed and reaped after the test."""
    with node_spawner(tmp_path, TELEMETRY_INTERVAL) as spawn_node:
        yield spawn_node


@pytest.fixture(scope="module")
def pair(cluster: FakeCluster, observer: Observer,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[NodeProcess, NodeProcess]]:
    specs = (("alpha", "native"), ("beta", "rpi4"))
    tmp = tmp_path_factory.mktemp("pair")
    with running_nodes(cluster.url, specs, tmp, observer, TELEMETRY_INTERVAL) as nodes:
        yield nodes[0], nodes[1]


def _deploy(cluster: FakeCluster, dep: str, stage: int, part: str, sha: str | None = None,
            nxt: NextStage | None = None, generation: int = 1) -> DeployCommand:
    return DeployCommand(deployment_id=dep, stage=stage, artifact_url=f"{cluster.url}/artifacts/{part}",
                         sha256=sha or cluster.sha(part), inputs=["x"] if stage == 0 else ["h"],
                         outputs=["h"] if stage == 0 else ["y"], next=nxt, generation=generation)


def _wait_state(observer: Observer, node: NodeProcess, dep: str, stage: int, state: str,
                generation: int = 1) -> StageState:
    return observer.wait_for(topics.job(node.node_id), StageState,
                             lambda s: (s.deployment_id == dep and s.stage == stage and s.state == state
                                        and s.generation == generation))


# ---------------------------------------------------------------- tests


def test_registration_telemetry_and_retained_birth(pair: tuple[NodeProcess, NodeProcess],
                                                   cluster: FakeCluster, observer: Observer,
                                                   mqtt_broker: Any) -> None:
    alpha, beta = pair
    body = cluster.registrations["beta"]
    assert body["profile"] == "rpi4" and body["emulated"] is True and body["speed_factor"] == 0.25
    assert body["memory_limit_mb"] <= 4096 and body["battery"] == {"percent": 80.0, "charging": False}
    assert body["data_endpoint"].startswith("tcp://127.0.0.1:")
    telemetry = observer.wait_for(topics.information(beta.node_id), NodeTelemetry, lambda t: True)
    assert telemetry.emulated and telemetry.profile == "rpi4" and telemetry.battery.percent == 80.0
    assert observer.wait_for(topics.information(alpha.node_id), NodeTelemetry, lambda t: not t.emulated)
    # a late subscriber still sees the retained birth
    status = retained_status(mqtt_broker, alpha.node_id, timeout=10)
    assert status.state == "online" and status.seq > 0


def test_two_stage_pipeline_matches_whole_model(pair: tuple[NodeProcess, NodeProcess], cluster: FakeCluster,
                                                observer: Observer) -> None:
    alpha, beta = pair
    endpoint_a = cluster.registrations["alpha"]["data_endpoint"]
    endpoint_b = cluster.registrations["beta"]["data_endpoint"]
    observer.publish(topics.control_deploy(beta.node_id), encode(_deploy(cluster, "pipe", 1, "part1")))
    nxt = NextStage(beta.node_id, endpoint_b, stage_key("pipe", 1, 1))
    observer.publish(topics.control_deploy(alpha.node_id),
                     encode(_deploy(cluster, "pipe", 0, "part0", nxt=nxt)))
    for node, stage in ((alpha, 0), (beta, 1)):
        _wait_state(observer, node, "pipe", stage, "DOWNLOADING")
        _wait_state(observer, node, "pipe", stage, "LOADING")
        assert _wait_state(observer, node, "pipe", stage, "READY").load_ms > 0
    whole = ort.InferenceSession(cluster.artifacts["whole"], providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(1)
    inputs = [{"x": rng.standard_normal((1, 8)).astype(np.float32)} for _ in range(10)]
    with TensorClient(endpoint_a) as client:
        for item in inputs:
            outputs, timings = client.infer("pipe/1/0", item)
            np.testing.assert_allclose(outputs["y"], whole.run(["y"], item)[0], atol=1e-5)
            assert set(timings) == {"pipe/1/0", "pipe/1/1"}
        results = client.infer_many("pipe/1/0", inputs, max_in_flight=4)
    for item, (outputs, _, latency) in zip(inputs, results, strict=True):
        np.testing.assert_allclose(outputs["y"], whole.run(["y"], item)[0], atol=1e-5)
        assert latency > 0
    birth = observer.wait_for(topics.status(alpha.node_id), NodeStatus, lambda s: s.state == "online")
    telemetry = observer.wait_for(topics.information(alpha.node_id), NodeTelemetry,
                                  lambda t: t.stages == ["pipe/1/0"])
    assert telemetry.seq == birth.seq
    stats = observer.wait_for(topics.job_resources(beta.node_id), StageStats,
                              lambda s: s.deployment_id == "pipe" and s.requests == 20)
    assert stats.stage == 1 and stats.generation == 1 and stats.compute_ms_mean > 0
    # delete unloads and the stage stops serving
    observer.publish(topics.control_delete(alpha.node_id), encode(DeleteCommand("pipe", None)))
    assert _wait_state(observer, alpha, "pipe", 0, "REMOVED").generation == 1
    with TensorClient(endpoint_a) as client, pytest.raises(RuntimeError, match="unknown stage"):
        client.infer("pipe/1/0", inputs[0])


def test_same_node_stages_and_bad_payloads(pair: tuple[NodeProcess, NodeProcess], cluster: FakeCluster,
                                           observer: Observer) -> None:
    alpha, _ = pair
    endpoint_a = cluster.registrations["alpha"]["data_endpoint"]
    control = topics.control_deploy(alpha.node_id)
    observer.publish(control, b"\x00 not json")
    observer.publish(control, b'{"v": 1, "deployment_id": "x"}')
    observer.publish(topics.control_delete(alpha.node_id), b"[]")
    observer.publish(control, encode(_deploy(cluster, "local", 1, "part1")))
    observer.publish(control, encode(_deploy(cluster, "local", 0, "part0",
                                             nxt=NextStage(alpha.node_id, endpoint_a, "local/1/1"))))
    _wait_state(observer, alpha, "local", 0, "READY")
    _wait_state(observer, alpha, "local", 1, "READY")
    x = {"x": np.ones((1, 8), np.float32)}
    with TensorClient(endpoint_a) as client:
        _, timings = client.infer("local/1/0", x)
    assert set(timings) == {"local/1/0", "local/1/1"}
    assert alpha.process.poll() is None


def test_make_before_break_serves_two_generations_side_by_side(
        pair: tuple[NodeProcess, NodeProcess], cluster: FakeCluster, observer: Observer) -> None:
    alpha, _ = pair
    endpoint_a = cluster.registrations["alpha"]["data_endpoint"]
    control = topics.control_deploy(alpha.node_id)
    observer.publish(control, encode(_deploy(cluster, "mbb", 0, "part0", generation=1)))
    _wait_state(observer, alpha, "mbb", 0, "READY", generation=1)
    observer.publish(control, encode(_deploy(cluster, "mbb", 0, "part0", generation=2)))
    _wait_state(observer, alpha, "mbb", 0, "READY", generation=2)
    x = {"x": np.ones((1, 8), np.float32)}
    with TensorClient(endpoint_a) as client:
        old, _ = client.infer(stage_key("mbb", 0, 1), x)
        new, _ = client.infer(stage_key("mbb", 0, 2), x)
    np.testing.assert_array_equal(old["h"], new["h"])
    observer.wait_for(topics.information(alpha.node_id), NodeTelemetry,
                      lambda t: {"mbb/1/0", "mbb/2/0"} <= set(t.stages))
    observer.wait_for(topics.job_resources(alpha.node_id), StageStats,
                      lambda s: s.deployment_id == "mbb" and s.generation == 2 and s.requests == 1)
    # break: the old generation goes, the new one keeps serving
    observer.publish(topics.control_delete(alpha.node_id), encode(DeleteCommand("mbb", generation=1)))
    _wait_state(observer, alpha, "mbb", 0, "REMOVED", generation=1)
    with TensorClient(endpoint_a) as client:
        again, _ = client.infer(stage_key("mbb", 0, 2), x)
        with pytest.raises(RuntimeError, match="unknown stage"):
            client.infer(stage_key("mbb", 0, 1), x)
    np.testing.assert_array_equal(again["h"], new["h"])
    observer.wait_for(topics.information(alpha.node_id), NodeTelemetry,
                      lambda t: "mbb/2/0" in t.stages and "mbb/1/0" not in t.stages)
    assert not [s for s in observer.seen(topics.job(alpha.node_id), StageState)
                if s.deployment_id == "mbb" and s.generation == 2 and s.state == "REMOVED"]


def test_wrong_sha256_reports_failed(pair: tuple[NodeProcess, NodeProcess], cluster: FakeCluster,
                                     observer: Observer) -> None:
    _, beta = pair
    wrong = "ab" * 32
    observer.publish(topics.control_deploy(beta.node_id),
                     encode(_deploy(cluster, "bad", 0, "part0", sha=wrong)))
    failed = _wait_state(observer, beta, "bad", 0, "FAILED")
    assert failed.reason == f"sha256 mismatch: expected {wrong} got {cluster.sha('part0')}"


def test_sigkill_publishes_last_will(cluster: FakeCluster, observer: Observer,
                                     spawn: Callable[..., NodeProcess]) -> None:
    node = spawn(cluster.url, "doomed")
    online = observer.wait_for(topics.status(node.node_id), NodeStatus, lambda s: s.state == "online")
    node.process.send_signal(signal.SIGKILL)
    offline = observer.wait_for(topics.status(node.node_id), NodeStatus, lambda s: s.state == "offline")
    assert offline.seq >= online.seq


def test_sigterm_exits_zero_promptly_with_offline_status(cluster: FakeCluster, observer: Observer,
                                                         spawn: Callable[..., NodeProcess]) -> None:
    node = spawn(cluster.url, "polite")
    observer.wait_for(topics.status(node.node_id), NodeStatus, lambda s: s.state == "online")
    started = time.monotonic()
    node.process.send_signal(signal.SIGTERM)
    assert node.process.wait(5) == 0
    assert time.monotonic() - started < 2.0
    observer.wait_for(topics.status(node.node_id), NodeStatus, lambda s: s.state == "offline")


def test_node_started_before_its_cluster_registers_once_it_is_up(mqtt_broker: Any, observer: Observer,
                                                                 spawn: Callable[..., NodeProcess]) -> None:
    port = free_port()
    node = spawn(f"http://127.0.0.1:{port}", "early")
    registrations: dict[str, dict[str, Any]] = {}
    poll_until(lambda: node.process.poll() is None, 2.0, what="node running")
    server = serve_cluster(port, mqtt_broker.host, mqtt_broker.port, {}, registrations)
    try:
        poll_until(lambda: "early" in registrations, DEADLINE, what="late registration")
        observer.wait_for(topics.status(node.node_id), NodeStatus, lambda s: s.state == "online")
    finally:
        server.shutdown()


def test_reconnects_with_a_new_birth_after_the_broker_restarts(tmp_path: Path,
                                                               spawn: Callable[..., NodeProcess]) -> None:
    from treeline_cli.broker import start_broker

    broker = start_broker("auto", workdir=tmp_path / "b1")
    port, registrations = free_port(), dict[str, dict[str, Any]]()
    server = serve_cluster(port, broker.host, broker.port, {}, registrations)
    watcher: Observer | None = None
    try:
        node = spawn(f"http://127.0.0.1:{port}", "phoenix")
        watcher = Observer.connect(broker)
        first = watcher.wait_for(topics.status(node.node_id), NodeStatus, lambda s: s.state == "online")
        watcher.close()
        broker.stop()
        broker = start_broker("auto", port=broker.port, workdir=tmp_path / "b2")
        watcher = Observer.connect(broker)
        second = watcher.wait_for(topics.status(node.node_id), NodeStatus,
                                  lambda s: s.state == "online" and s.seq > first.seq)
        assert second.seq > first.seq
        watcher.wait_for(topics.information(node.node_id), NodeTelemetry, lambda t: True)
    finally:
        if watcher is not None:
            watcher.close()
        server.shutdown()
        broker.stop()
