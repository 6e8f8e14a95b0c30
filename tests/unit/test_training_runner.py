"""The cluster's training worker (cluster_orchestrator.training_runner) without processes.

Too few nodes with the data: FAILED with the online nodes as ``failed_capacity`` (retried when
another comes online) and the placement's reasons. A deletion while training stops every Flower
process of the job and ends the worker. A deployment a previous process left RUNNING: requested
again at start, its old job's Flower processes told to stop. A server whose node goes offline
while training: the worker's reconcile tick starts it on another node of the placement.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
import time
from typing import Any

import pytest

from cluster_orchestrator.artifacts import ArtifactCache
from cluster_orchestrator.deployments import DeploymentBook, Superseded
from cluster_orchestrator.root_client import RootClient
from cluster_orchestrator.store import InMemoryClusterStateStore
from cluster_orchestrator.training_job import TrainingResult
from cluster_orchestrator.training_runner import TrainingRunner
from treeline_common import topics
from treeline_common.clock import FakeClock
from treeline_common.errors import Unavailable
from treeline_common.jobs import JobRequest, JobStatus, ModelRef
from treeline_common.training import TrainCommand, TrainingSpec, TrainReport

MODEL = b"starting model"
SHA = hashlib.sha256(MODEL).hexdigest()


def make_runner(nodes: list[dict[str, Any]], root: RootClient | None = None,
                ) -> tuple[TrainingRunner, DeploymentBook, list[tuple[str, Any]]]:
    book = DeploymentBook(InMemoryClusterStateStore(), FakeClock())
    sent: list[tuple[str, Any]] = []
    artifacts = ArtifactCache()
    artifacts.put(SHA, MODEL)  # the starting model is held: nothing is downloaded
    runner = TrainingRunner(book, lambda topic, msg: sent.append((topic, msg)), lambda: nodes,
                            root or RootClient("http://root.invalid"), artifacts, "http://root.invalid",
                            "http://cluster.invalid", lambda _d: None, threading.Event(), FakeClock(),
                            register_retry_s=(0.0, 0.0))
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


def test_a_deletion_while_training_stops_the_job_and_ends_the_worker() -> None:
    runner, book, sent = make_runner([node("a", ["data:digits"]), node("b", ["data:digits"])])
    deployment_id, epoch = submit(book, JobStatus.REQUESTED)
    outcome: list[BaseException] = []

    def work() -> None:
        try:
            runner.run(deployment_id, epoch)
        except BaseException as exc:  # noqa: BLE001 - the test inspects it
            outcome.append(exc)

    worker = threading.Thread(target=work, daemon=True)
    worker.start()
    deadline = time.monotonic() + 10
    while not sent and time.monotonic() < deadline:  # poll with a deadline for the server's start
        time.sleep(0.01)
    [(topic, start)] = sent
    assert topic in (topics.control_train("a"), topics.control_train("b"))
    assert start.action == "start" and start.role == "server" and start.model_sha256 == SHA
    assert book.require(deployment_id)["status"] == "DEPLOYING"
    book.request(deployment_id, lambda current: dict(current or {}, status=JobStatus.DELETED.value))
    worker.join(10)
    assert not worker.is_alive()
    assert [type(e).__name__ for e in outcome] == ["Superseded"]
    stops = sorted(t for t, m in sent if m.action == "stop")
    assert stops == [topics.control_train("a"), topics.control_train("b")], sent


class FlakyRoot(RootClient):
    """Answers ``post_training_result`` with Unavailable ``failures`` times, then a version doc."""

    def __init__(self, failures: int) -> None:
        super().__init__("http://root.invalid")
        self.failures = failures
        self.posts = 0

    def post_training_result(self, *args: Any) -> Any:
        self.posts += 1
        if self.posts <= self.failures:
            raise Unavailable("the root is down")
        return {"name": "m", "version": 2}


@pytest.mark.parametrize(("failures", "status", "detail"), [
    (2, "DELETED", "training done: registered m:2"),  # two retries are allowed
    (3, "FAILED", "trained, but the root did not register the result: the root is down"),
])
def test_the_result_post_is_retried_while_the_root_is_unavailable(failures: int, status: str,
                                                                  detail: str) -> None:
    root = FlakyRoot(failures)
    runner, book, _ = make_runner([], root)
    deployment_id, epoch = submit(book, JobStatus.RUNNING)
    request = JobRequest.from_dict(book.require(deployment_id)["job"])
    assert request.training is not None
    result = TrainingResult("j", request.training, 1, b"onnx", "0" * 64, [], ["a", "b"], "a")
    runner._register(deployment_id, epoch, request, result)
    doc = book.require(deployment_id)
    assert (doc["status"], doc["status_detail"]) == (status, detail)
    assert root.posts == min(failures, 2) + 1


def test_the_worker_moves_the_server_off_a_node_that_went_offline() -> None:
    nodes = [node("a", ["data:digits"]), node("b", ["data:digits"])]
    runner, book, sent = make_runner(nodes)
    deployment_id, epoch = submit(book, JobStatus.REQUESTED)
    worker = threading.Thread(target=lambda: _run_quietly(runner, deployment_id, epoch), daemon=True)
    worker.start()

    def server_starts() -> list[tuple[str, Any]]:
        return [(t, m) for t, m in sent if m.action == "start" and m.role == "server"]

    deadline = time.monotonic() + 10
    while not server_starts() and time.monotonic() < deadline:  # poll with a deadline
        time.sleep(0.01)
    [(topic, first)] = server_starts()
    server = topic.split("/")[1]
    job_id = first.job_id
    runner.on_report(server, TrainReport(server, job_id, "server", "STARTED",
                                         server_address="127.0.0.1:4000"))
    next(n for n in nodes if n["node_id"] == server)["online"] = False  # its node goes silent
    deadline = time.monotonic() + 10
    while len(server_starts()) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    other = ({"a", "b"} - {server}).pop()
    assert [t for t, _ in server_starts()] == [topic, topics.control_train(other)]
    assert any(e["kind"] == "training_server_restarted" for e in book.require(deployment_id)["events"])
    book.request(deployment_id, lambda current: dict(current or {}, status=JobStatus.DELETED.value))
    worker.join(10)
    assert not worker.is_alive()


def _run_quietly(runner: TrainingRunner, deployment_id: str, epoch: int) -> None:
    with contextlib.suppress(Superseded):  # the test deletes the deployment to end the worker
        runner.run(deployment_id, epoch)


def test_event_messages_name_nodes_by_name() -> None:
    from cluster_orchestrator.training_runner import with_node_names

    nodes = [{"node_id": "node-1e90aa", "name": "rpi4-2"}, {"node_id": "node-1e90", "name": "server-1"}]
    assert with_node_names("client node-1e90aa failed: exited with code 1", nodes) == \
        "client rpi4-2 failed: exited with code 1"
    assert with_node_names("server on node-1e90, clients on node-1e90aa, node-77", nodes) == \
        "server on server-1, clients on rpi4-2, node-77"  # whole ids only; an unknown one stays
