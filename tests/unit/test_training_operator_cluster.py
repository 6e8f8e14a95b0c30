"""The cluster's dry run of a training job (``POST /api/plan``) and the fields its refusals name.

The cluster answers a training job's plan with :func:`place_training` over its nodes now: the
server, the clients and every rejected node with its reason code (keyed by node name), or
why it cannot be scheduled, naming ``training.data`` (no node carries the label; the labels
seen are listed) or ``training.min_clients`` (too few carriers pass the filters). Nothing is
downloaded, published or committed.
"""

from __future__ import annotations

from typing import Any

import pytest
from test_cluster_api import REG, Cluster

from treeline_common.jobs import JobRequest, ModelRef
from treeline_common.messages import NodeTelemetry
from treeline_common.training import TrainingSpec


def _node(cluster: Cluster, name: str, labels: list[str], online: bool = True,
          memory_limit_mb: int = 4096) -> str:
    body = {**REG, "name": name, "labels": labels, "memory_limit_mb": memory_limit_mb}
    node_id = str(cluster.http.post("/api/node/register", json=body).get_json()["node_id"])
    if online:
        cluster.core.on_telemetry(node_id, NodeTelemetry(
            node_id=node_id, ts=cluster.clock.now(), cpu_percent=5.0, cpu_count=4, memory_percent=40.0,
            memory_total_mb=8000, memory_available_mb=3000, memory_limit_mb=memory_limit_mb,
            profile="server"))
    return node_id


def _job(cluster: Cluster, data: str = "data:digits", min_clients: int = 2) -> dict[str, Any]:
    block = {"framework": "flower", "rounds": 3, "min_clients": min_clients, "data": data,
             "model": "digits:1"}
    ms = {"microserviceID": "", "microservice_name": "fl", "microservice_namespace": "demo",
          "virtualization": "ml-training", "memory": 256, "training": block,
          "constraints": [], "connectivity": []}
    return JobRequest(service_id="s1", instance=0, microservice=ms,
                      model=ModelRef(name="digits", version=1, sha256=cluster.sha256),
                      root_url="http://root.test:10000", training=TrainingSpec.from_sla(block)).to_dict()


@pytest.fixture()
def cluster() -> Cluster:
    return Cluster()


def test_a_training_plan_names_server_clients_and_each_rejected_node(cluster: Cluster) -> None:
    _node(cluster, "a", ["data:digits"])
    _node(cluster, "b", ["data:digits"])
    _node(cluster, "small", ["data:digits"], memory_limit_mb=64)
    _node(cluster, "off", ["data:digits"], online=False)
    _node(cluster, "plain", [])
    r = cluster.http.post("/api/plan", json=_job(cluster))
    assert r.status_code == 200, r.get_json()
    body = r.get_json()
    assert body["schedulable"] is True and body["strategy"] == "federated fedavg" and body["message"] == ""
    training = body["training"]
    assert sorted(training["client_names"]) == ["a", "b"]
    assert training["server_name"] in {"a", "b", "plain"}
    reasons = {r["node_name"]: r["reason"] for r in training["rejected"]}
    assert reasons["small"] == "insufficient_memory" and reasons["off"] == "offline"
    assert body["reasons"]["small"].startswith("insufficient_memory: ")
    assert (training["rounds"], training["min_clients"], training["data"]) == (3, 2, "data:digits")
    assert cluster.bus.sent == [] and cluster.core.book.list_deployments() == []
    assert cluster.root.downloads == 0  # a training plan needs no model


@pytest.mark.parametrize(("data", "min_clients", "field", "words"), [
    ("data:digitz", 2, "training.data",
     "training.data: no node carries label data:digitz; labels seen: data:digits"),
    ("data:digits", 3, "training.min_clients", "2 node(s) with data:digits pass the filters; "
                                               "training.min_clients is 3"),
])
def test_an_unschedulable_training_plan_names_the_sla_field(cluster: Cluster, data: str, min_clients: int,
                                                            field: str, words: str) -> None:
    _node(cluster, "a", ["data:digits"])
    _node(cluster, "b", ["data:digits", "zone:lab"])
    _node(cluster, "off", ["data:digits"], online=False)
    body = cluster.http.post("/api/plan", json=_job(cluster, data, min_clients)).get_json()
    assert body["schedulable"] is False and body["message"] == words
    assert body["training"]["field"] == field and body["training"]["server"] == ""
    assert body["reasons"]["off"].startswith("offline: ")


def test_a_bad_training_plan_body_is_400_naming_the_field(cluster: Cluster) -> None:
    job = _job(cluster)
    job["training"]["rounds"] = 0
    answer = cluster.http.post("/api/plan", json=job)
    assert answer.status_code == 400, answer.get_json()
    assert any("rounds" in d["path"] for d in answer.get_json()["error"]["details"])
