"""The cluster's parts of a hierarchical job (cluster_orchestrator.training_hierarchy), no processes.

Role cluster: the worker asks the root for the root aggregator's address (polled while it has
not started), starts the aggregator with it as upstream, the clients on the aggregator's local
address, records the local rounds and ends DELETED naming the root instance when the aggregator
is done; nothing is registered. Role root: the Flower server alone (no local clients), expecting
one Flower client per participating cluster with ``min_clients`` = ``min_clusters``; its lineage
records the hierarchy.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any

from test_training_runner import SHA, make_runner, node

from cluster_orchestrator.deployments import DeploymentBook, Superseded
from cluster_orchestrator.planning import build_snapshot
from cluster_orchestrator.root_client import RootClient
from cluster_orchestrator.training import place_aggregator
from cluster_orchestrator.training_hierarchy import lineage_of, wait_for_root_aggregator
from treeline_common import topics
from treeline_common.clock import FakeClock
from treeline_common.errors import NotFound
from treeline_common.jobs import JobRequest, JobStatus, ModelRef
from treeline_common.training import TrainCommand, TrainingSpec, TrainReport
from treeline_common.training_hierarchy import TrainingPart

SPEC = TrainingSpec.from_sla({"rounds": 2, "data": "data:digits", "model": "m:1", "min_clients": 2,
                              "hierarchical": {"cluster_rounds": 3, "min_clusters": 2}})
NODES = [node("a", ["data:digits"]), node("b", ["data:digits"]), node("c", [])]


class FakeRoot(RootClient):
    """Answers the aggregator address after ``misses`` NotFound answers."""

    def __init__(self, misses: int) -> None:
        super().__init__("http://root.invalid")
        self.misses = misses
        self.asked: list[tuple[str, int]] = []

    def training_aggregator(self, service_id: str, instance: int) -> str:
        self.asked.append((service_id, instance))
        if len(self.asked) <= self.misses:
            raise NotFound("not started yet")
        return "10.0.0.9:9092"


def submit(book: DeploymentBook, part: TrainingPart) -> tuple[str, int]:
    job = JobRequest("svc", 2, {"memory": 64}, ModelRef("m", 1, SHA), training=SPEC, training_part=part)
    doc = book.request(job.deployment_id, lambda _c: {
        "deployment_id": job.deployment_id, "service_id": "svc", "instance": 2, "job": job.to_dict(),
        "status": JobStatus.REQUESTED.value})
    assert doc is not None
    return job.deployment_id, int(doc["epoch"])


def commands(sent: list[tuple[str, Any]], action: str = "start") -> list[tuple[str, TrainCommand]]:
    return [(t, c) for t, c in sent if isinstance(c, TrainCommand) and c.action == action]


def wait_for(predicate: Any, timeout: float = 10.0) -> None:
    done = threading.Event()
    for _ in range(int(timeout / 0.02)):
        if predicate():
            return
        done.wait(0.02)
    raise AssertionError("condition not met in time")


def test_a_cluster_part_runs_an_aggregator_under_the_root_and_ends_without_registering() -> None:
    root = FakeRoot(misses=2)
    runner, book, sent = make_runner(NODES, root)
    deployment_id, epoch = submit(book, TrainingPart("cluster", 1, ("c1", "c2")))
    worker = threading.Thread(target=runner.run, args=(deployment_id, epoch))
    worker.start()
    wait_for(lambda: commands(sent))
    assert root.asked == [("svc", 1)] * 3  # polled while the root aggregator had not started
    [(topic, start)] = commands(sent)
    assert start.role == "aggregator" and start.upstream_address == "10.0.0.9:9092"
    assert start.clients == 2 and start.server_address == "127.0.0.1:0"
    server = topic.split("/")[1]
    job_id = start.job_id
    runner.on_report(server, TrainReport(server, job_id, "aggregator", "STARTED",
                                         server_address="127.0.0.1:7001"))
    clients = [(t, c) for t, c in commands(sent) if c.role == "client"]
    assert sorted(t for t, _ in clients) == [topics.control_train("a"), topics.control_train("b")]
    assert {c.server_address for _, c in clients} == {"127.0.0.1:7001"}
    for rnd in (1, 2, 3):
        runner.on_report(server, TrainReport(server, job_id, "aggregator", "ROUND", round=rnd, loss=1.0,
                                             clients=2))
    runner.on_report(server, TrainReport(server, job_id, "aggregator", "DONE"))
    worker.join(10)
    doc = book.require(deployment_id)
    assert doc["status"] == "DELETED", doc
    assert doc["status_detail"] == "cluster part done, aggregated into svc/1"
    kinds = [e["kind"] for e in doc["events"]]
    assert kinds.count("training_cluster_round") == 3 and "training_cluster_done" in kinds, kinds
    assert {t for t, _ in commands(sent, "stop")} >= {topics.control_train(n) for n in ("a", "b")}


def test_a_cluster_part_fails_when_its_aggregator_fails() -> None:
    runner, book, sent = make_runner(NODES, FakeRoot(misses=0))
    deployment_id, epoch = submit(book, TrainingPart("cluster", 1))
    worker = threading.Thread(target=runner.run, args=(deployment_id, epoch))
    worker.start()
    wait_for(lambda: commands(sent))
    [(topic, start)] = commands(sent)
    server = topic.split("/")[1]
    runner.on_report(server, TrainReport(server, start.job_id, "aggregator", "FAILED", reason="boom\nline 2"))
    worker.join(10)
    doc = book.require(deployment_id)
    assert doc["status"] == "FAILED" and "cluster aggregator failed: boom line 2" in doc["status_detail"], doc


def test_waiting_for_the_root_aggregator_has_a_deadline() -> None:
    clock = FakeClock()

    def ask() -> str:
        clock.advance(10.0)
        raise NotFound("not started yet")

    try:
        wait_for_root_aggregator(ask, threading.Event(), clock, timeout_s=25.0, poll_s=0.0)
    except TimeoutError as exc:
        assert "did not start within 25 s" in str(exc)
    else:
        raise AssertionError("no timeout")


def test_the_root_part_is_a_server_expecting_one_client_per_cluster() -> None:
    runner, book, sent = make_runner(NODES)
    deployment_id, epoch = submit(book, TrainingPart("root", 2, ("c1", "c2", "c3")))

    def run() -> None:
        with contextlib.suppress(Superseded):  # the deletion below ends the worker this way
            runner.run(deployment_id, epoch)

    worker = threading.Thread(target=run)
    worker.start()
    wait_for(lambda: commands(sent))
    [(_topic, start)] = commands(sent)
    assert start.role == "server" and start.clients == 3
    assert start.spec is not None and start.spec.min_clients == 2  # min_clusters
    book.request(deployment_id, lambda c: dict(c, status="DELETED") if c else None)  # deleted: worker ends
    worker.join(10)
    placement = place_aggregator(build_snapshot(NODES))
    assert placement.server and placement.clients == () and not placement.unschedulable


def test_the_root_lineage_records_the_hierarchy() -> None:
    job = JobRequest("svc", 0, {}, ModelRef("m", 1, SHA), training=SPEC,
                     training_part=TrainingPart("root", 0, ("c1", "c2")))
    flat = {"parent": {"name": "m", "version": 1}, "parameters": {"clients": [], "rounds": 2}}
    lineage = lineage_of(flat, job)
    assert lineage["parameters"]["hierarchical"] == {"cluster_rounds": 3, "min_clusters": 2,
                                                     "clusters": ["c1", "c2"]}
    assert lineage["parameters"]["clients"] == ["c1", "c2"] and lineage["parameters"]["rounds"] == 2
    ran_with = {**flat, "parameters": {**flat["parameters"], "min_clients": 9}}  # the root aggregator's own
    assert lineage_of(ran_with, job)["parameters"]["min_clients"] == SPEC.min_clients  # the SLA's
