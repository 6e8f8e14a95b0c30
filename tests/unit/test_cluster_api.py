"""The cluster REST layer over an in-memory store: validation errors name their fields."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from flask.testing import FlaskClient

from cluster_orchestrator.api import create_app
from cluster_orchestrator.orchestrator import ClusterConfig, ClusterOrchestrator
from cluster_orchestrator.root_client import RootClient
from cluster_orchestrator.store import InMemoryClusterStateStore
from treeline_common.clock import FakeClock

REG = {"name": "n1", "profile": "server", "emulated": True, "arch": "x86_64", "cpu_count": 4,
       "memory_limit_mb": 4096, "speed_factor": 1.0, "accelerators": [], "battery": None, "labels": [],
       "data_endpoint": "tcp://127.0.0.1:7001"}


class RecordingBus:
    def __init__(self) -> None:
        self.sent: list[tuple[str, Any]] = []

    def publish(self, topic: str, message: Any) -> None:
        self.sent.append((topic, message))


@pytest.fixture()
def client() -> Iterator[FlaskClient]:
    config = ClusterConfig(name="c1", root_url="http://127.0.0.1:9", public_url="http://127.0.0.1:10100",
                           mqtt_host="127.0.0.1", mqtt_port=1883)
    store = InMemoryClusterStateStore()
    store.set_setting("cluster_id", "cid-1")
    core = ClusterOrchestrator(config, store, RootClient(config.root_url), RecordingBus(), FakeClock())
    yield create_app(core).test_client()


def test_register_returns_connection_details_and_is_idempotent(client: FlaskClient) -> None:
    first = client.post("/api/node/register", json=REG)
    assert first.status_code == 200
    body = first.get_json()
    assert body == {"node_id": body["node_id"], "cluster_id": "cid-1", "mqtt_host": "127.0.0.1",
                    "mqtt_port": 1883, "telemetry_interval": 2.0}
    assert client.post("/api/node/register", json=REG).get_json()["node_id"] == body["node_id"]
    nodes = client.get("/api/nodes").get_json()["nodes"]
    assert [(n["name"], n["online"]) for n in nodes] == [("n1", False)]


@pytest.mark.parametrize("change, paths", [
    ({"name": None}, ["name"]),
    ({"cpu_count": "four", "speed_factor": 0}, ["cpu_count", "speed_factor"]),
    ({"data_endpoint": "127.0.0.1:7001", "labels": "x"}, ["labels", "data_endpoint"]),
    ({"memory_limit_mb": True}, ["memory_limit_mb"]),
])
def test_register_rejects_bad_fields_by_name(client: FlaskClient, change: dict, paths: list[str]) -> None:
    body = {k: v for k, v in {**REG, **change}.items() if v is not None}
    answer = client.post("/api/node/register", json=body)
    assert answer.status_code == 400
    error = answer.get_json()["error"]
    assert error["code"] == "INVALID_INPUT"
    assert sorted(d["path"] for d in error["details"]) == sorted(paths)


def test_register_rejects_non_json(client: FlaskClient) -> None:
    assert client.post("/api/node/register", data=b"nope").status_code == 400


def test_job_validation_and_unknown_deployment(client: FlaskClient) -> None:
    answer = client.post("/api/service/s1/0", json={"service_id": "other", "model": {"sha256": "xyz"}})
    assert answer.status_code == 400
    paths = {d["path"] for d in answer.get_json()["error"]["details"]}
    assert {"service_id", "model.sha256", "model.name", "model.version"} <= paths
    assert any(p.startswith("microservice") for p in paths)
    assert client.get("/api/deployments/s1/0").status_code == 404
    assert client.delete("/api/service/s1/0").status_code == 404


def test_health_and_status(client: FlaskClient) -> None:
    assert client.get("/api/health").get_json() == {"status": "ok"}
    status = client.get("/status").get_json()
    assert status["cluster_id"] == "cid-1" and status["aggregate"]["active_nodes"] == 0
