"""A real node engine process refuses what it must not serve and keeps serving (issue 10, item 7).

Real Mosquitto, a real node engine started with a 2 MB memory limit, artifacts served over HTTP by
the stand-in cluster: a wrong digest, an oversized partition, undecodable and meaningless commands
each end as a FAILED StageState with a reason on ``nodes/<id>/job``; the node stays up, and a good
deploy afterwards is READY and answers requests.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from treeline_test_helpers import REPO, FakeCluster, Observer, chain_models

from node_engine.data_plane.client import TensorClient
from treeline_common import topics
from treeline_common.messages import DeployCommand, NextStage, NodeStatus, NodeTelemetry, StageState, encode

pytestmark = pytest.mark.integration
NAME = "careful"
NODE_ID = f"node-{NAME}"
LIMIT_MB = 2
BIG = b"\x01" * (3 * 1024 * 1024)  # needs ~6 MB loaded: over a 2 MB limit


@pytest.fixture(scope="module")
def cluster(mqtt_broker: Any) -> Iterator[FakeCluster]:
    artifacts = dict(chain_models(seed=11))
    artifacts["big"] = BIG
    with FakeCluster.start(mqtt_broker, artifacts) as fake:
        yield fake


@pytest.fixture(scope="module")
def node(cluster: FakeCluster, observer: Observer,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[subprocess.Popen[bytes]]:
    tmp = tmp_path_factory.mktemp("safety")
    with (tmp / "node.log").open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "node_engine", "--cluster-url", cluster.url, "--name", NAME,
             "--profile", "native", "--memory-limit-mb", str(LIMIT_MB), "--telemetry-interval", "0.5",
             "--data-dir", str(tmp / NAME), "--threads", "1"],
            cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    try:
        observer.wait_for(topics.status(NODE_ID), NodeStatus, lambda s: s.state == "online")
        yield process
    finally:
        process.kill()
        process.wait(10)


def _deploy(cluster: FakeCluster, stage: int, part: str, **kw: Any) -> DeployCommand:
    fields: dict[str, Any] = {"deployment_id": "safe", "stage": stage, "sha256": cluster.sha(part),
                              "artifact_url": f"{cluster.url}/artifacts/{part}",
                              "inputs": ["x"] if stage == 0 else ["h"],
                              "outputs": ["h"] if stage == 0 else ["y"], "generation": 1}
    fields.update(kw)
    return DeployCommand(**fields)


def _failed(observer: Observer, stage: int, generation: int = 1) -> StageState:
    return observer.wait_for(topics.job(NODE_ID), StageState,
                             lambda s: (s.deployment_id == "safe" and s.stage == stage and s.state == "FAILED"
                                        and s.generation == generation))


def test_refusals_are_reported_and_the_node_keeps_serving(node: subprocess.Popen[bytes], cluster: FakeCluster,
                                                          observer: Observer) -> None:
    control = topics.control_deploy(NODE_ID)
    telemetry = observer.wait_for(topics.information(NODE_ID), NodeTelemetry, lambda t: True)
    assert telemetry.memory_limit_mb == LIMIT_MB

    # a wrong digest: the bytes are downloaded, hashed and refused
    wrong = "cd" * 32
    observer.publish(control, encode(_deploy(cluster, 10, "part0", sha256=wrong)))
    assert _failed(observer, 10).reason == f"sha256 mismatch: expected {wrong} got {cluster.sha('part0')}"

    # a partition larger than the memory limit: refused on its announced size
    observer.publish(control, encode(_deploy(cluster, 11, "big")))
    reason = _failed(observer, 11).reason
    assert reason.startswith("memory limit exceeded: the partition needs about 6.0 MB (3.0 MB artifact × 2)")
    assert f"free of its {LIMIT_MB}.0 MB limit" in reason

    # payloads that do not decode: FAILED for the stage they meant, dropped when none is readable
    observer.publish(control, b"\x00 not json")
    body = json.loads(encode(_deploy(cluster, 12, "part0")))
    body["inputs"] = "x"
    observer.publish(control, json.dumps(body).encode())
    assert "inputs must be a list" in _failed(observer, 12).reason
    observer.publish(topics.control_delete(NODE_ID), b'{"v": 1, "deployment_id": "safe", "stage": 13, '
                                                      b'"generation": "one"}')
    assert _failed(observer, 13, generation=0).reason.startswith("bad command: DeleteCommand:")

    # commands that decode but make no sense
    observer.publish(control, encode(_deploy(cluster, -2, "part0")))
    assert _failed(observer, -2).reason == "bad command: stage: must be >= 0 (or -1, a relay entry), not -2"
    bad_route = NextStage(NODE_ID, "localhost", "x/1/1")
    observer.publish(control, encode(_deploy(cluster, 14, "part0", next=bad_route)))
    assert _failed(observer, 14).reason.startswith("bad command: next.endpoint: must be tcp://host:port")

    # nothing was lost: a good two-stage deploy is READY and answers
    assert node.poll() is None
    endpoint = cluster.registrations[NAME]["data_endpoint"]
    observer.publish(control, encode(_deploy(cluster, 1, "part1")))
    route = NextStage(NODE_ID, endpoint, "safe/1/1")
    observer.publish(control, encode(_deploy(cluster, 0, "part0", next=route)))
    for stage in (0, 1):
        observer.wait_for(topics.job(NODE_ID), StageState,
                          lambda s, i=stage: (s.deployment_id == "safe" and s.stage == i
                                              and s.state == "READY"))
    with TensorClient(endpoint) as client:
        outputs, timings = client.infer("safe/1/0", {"x": np.ones((1, 8), np.float32)})
    assert set(timings) == {"safe/1/0", "safe/1/1"} and np.isfinite(outputs["y"]).all()
    observer.wait_for(topics.information(NODE_ID), NodeTelemetry,
                      lambda t: set(t.stages) == {"safe/1/0", "safe/1/1"})
    assert node.poll() is None
