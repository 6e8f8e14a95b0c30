"""The cluster's training worker (cluster_orchestrator.training_runner) without processes.

Too few nodes with the data: FAILED with the online nodes as ``failed_capacity`` (retried when
another comes online) and the placement's reasons. A deployment a previous process left
RUNNING: requested again at start, its old job's Flower processes told to stop.
"""

from __future__ import annotations

import threading
from typing import Any

from cluster_orchestrator.artifacts import ArtifactCache
from cluster_orchestrator.deployments import DeploymentBook
from cluster_orchestrator.root_client import RootClient
from cluster_orchestrator.store import InMemoryClusterStateStore
from cluster_orchestrator.training_runner import TrainingRunner
from treeline_common import topics
from treeline_common.clock import FakeClock
from treeline_common.jobs import JobRequest, JobStatus, ModelRef
from treeline_common.training import TrainCommand, TrainingSpec

SHA = "ab" * 32


def make_runner(nodes: list[dict[str, Any]]) -> tuple[TrainingRunner, DeploymentBook, list[tuple[str, Any]]]:
    book = DeploymentBook(InMemoryClusterStateStore(), FakeClock())
    sent: list[tuple[str, Any]] = []
    runner = TrainingRunner(book, lambda topic, msg: sent.append((topic, msg)), lambda: nodes,
                            RootClient("http://root.invalid"), ArtifactCache(), "http://root.invalid",
                            "http://cluster.invalid", lambda _d: None, threading.Event(), FakeClock())
    return runner, book, sent


def submit(book: DeploymentBook, status: JobStatus, **fields: Any) -> tuple[str, int]:
    spec = TrainingSpec.from_sla({"rounds": 2, "data": "data:digits", "model": "m:1", "min_clients": 2})
    job = JobRequest("svc", 0, {"memory": 64}, ModelRef("m", 1, SHA), training=spec)
    doc = book.request(job.deployment_id, lambda _c: {
        "deployment_id": job.deployment_id, "service_id": "svc", "instance": 0, "job": job.to_dict(),
        "status": status.value, **fields})
    assert doc is not None
    return job.deployment_id, int(doc["epoch"])


def node(node_id: str, labels: list[str]) -> dict[str, Any]:
    return {"node_id": node_id, "name": node_id, "online": True, "labels": labels,
            "data_endpoint": "tcp://127.0.0.1:1"}


def test_too_few_data_nodes_fail_with_the_capacity_to_wait_for_and_the_reasons() -> None:
    runner, book, sent = make_runner([node("a", ["data:digits"]), node("b", [])])
    deployment_id, epoch = submit(book, JobStatus.REQUESTED)
    runner.run(deployment_id, epoch)
    doc = book.require(deployment_id)
    assert doc["status"] == "FAILED" and "min_clients is 2" in doc["status_detail"], doc["status_detail"]
    assert doc["failed_capacity"] == ["a", "b"]
    assert {r["node_id"]: r["reason"] for r in doc["explanation"]["rejected"]} == {"b": "no_data"}
    assert sent == []


def test_a_deployment_left_running_is_requested_again_and_its_old_job_stopped() -> None:
    runner, book, sent = make_runner([])
    deployment_id, epoch = submit(book, JobStatus.RUNNING, training_job="svc-0.3", training_nodes=["a", "b"])
    assert runner.resume() == [deployment_id]
    doc = book.require(deployment_id)
    assert doc["status"] == "REQUESTED" and int(doc["epoch"]) == epoch + 1
    assert doc["events"][-1]["kind"] == "training_restarted"
    assert sent == [(topics.control_train("a"), TrainCommand("svc-0.3", "stop")),
                    (topics.control_train("b"), TrainCommand("svc-0.3", "stop"))]
    assert runner.resume() == []  # nothing left RUNNING
