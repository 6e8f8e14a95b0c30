"""Placement of a federated job (cluster_orchestrator.training) and the job's command/report flow."""

from __future__ import annotations

import base64
import hashlib
from typing import Any

from treeline_test_helpers import node_view

from cluster_orchestrator.training import (
    REASON_NO_DATA,
    TrainingRequirements,
    place_training,
    requirements_of,
    server_host,
)
from cluster_orchestrator.training_job import CLIENT_RETRIES, TrainingJob
from ml_scheduler.plugins.filters import (
    REASON_ARCH,
    REASON_BATTERY,
    REASON_INSUFFICIENT_MEMORY,
    REASON_OFFLINE,
)
from ml_scheduler.snapshot import ClusterSnapshot
from treeline_common import topics
from treeline_common.training import TrainCommand, TrainingSpec, TrainReport

SPEC = TrainingSpec.from_sla({"framework": "flower", "rounds": 2, "data": "data:digits", "model": "m:1",
                              "min_clients": 2})
DATA = ("data:digits",)


def snapshot(*views: Any) -> ClusterSnapshot:
    return ClusterSnapshot(nodes=tuple(views))


def test_clients_are_the_data_nodes_and_every_rejection_has_its_reason() -> None:
    nodes = snapshot(
        node_view("a", labels=DATA, speed_factor=1.0),
        node_view("b", labels=DATA, speed_factor=2.0),
        node_view("c", labels=DATA, online=False),
        node_view("d", labels=DATA, battery_percent=10.0),
        node_view("e", labels=DATA, arch="aarch64"),
        node_view("f", labels=DATA, memory_limit_mb=64),
        node_view("g", speed_factor=0.5),
    )
    needs = TrainingRequirements(memory_mb=128, arch=("x86_64",), battery_min_percent=30)
    placement = place_training(nodes, SPEC, needs)
    assert placement.clients == ("a", "b")
    assert placement.server == "b"  # fastest mains-powered eligible node
    reasons = {n: r for n, (r, _) in placement.rejected.items()}
    assert reasons == {"c": REASON_OFFLINE, "d": REASON_BATTERY, "e": REASON_ARCH,
                       "f": REASON_INSUFFICIENT_MEMORY, "g": REASON_NO_DATA}
    assert "below the SLA's minimum 30%" in placement.rejected["d"][1]
    explained = placement.explanation()
    assert [r["node_id"] for r in explained["rejected"]] == ["c", "d", "e", "f", "g"]


def test_server_may_be_a_node_without_data() -> None:
    placement = place_training(snapshot(node_view("a", labels=DATA), node_view("b", labels=DATA),
                                        node_view("big", speed_factor=4.0)), SPEC)
    assert placement.server == "big" and "big" not in placement.rejected


def test_too_few_data_nodes_is_a_result_not_an_exception() -> None:
    placement = place_training(snapshot(node_view("a", labels=DATA), node_view("b")), SPEC)
    assert placement.unschedulable.startswith("1 node(s) with data:digits")
    assert placement.server == "" and placement.clients == ()


def test_requirements_and_host_from_sla_and_node_doc() -> None:
    ms = {"memory": 256, "arch": ["x86_64"], "constraints": [{"type": "battery", "min_percent": 40}]}
    assert requirements_of(ms) == TrainingRequirements(256.0, ("x86_64",), 40.0)
    assert server_host({"data_endpoint": "tcp://10.0.0.7:5555"}) == "10.0.0.7"


def _job(events: list[dict[str, Any]], sent: list[tuple[str, Any]], results: list[Any]) -> TrainingJob:
    placement = place_training(snapshot(node_view("a", labels=DATA), node_view("b", labels=DATA),
                                        node_view("c", labels=DATA)), SPEC)
    return TrainingJob("job-1", SPEC, placement, server_host="127.0.0.1", model_url="http://x/m",
                       model_sha256="0" * 64, parent_version=1, publish=lambda t, m: sent.append((t, m)),
                       on_event=lambda _j, e: events.append(dict(e)), on_result=results.append)


def test_job_flow_server_first_then_clients_then_result_with_lineage() -> None:
    events: list[dict[str, Any]] = []
    sent: list[tuple[str, Any]] = []
    results: list[Any] = []
    job = _job(events, sent, results)
    job.start()
    server = job.placement.server
    assert sent == [(topics.control_train(server), sent[0][1])] and sent[0][1].role == "server"
    job.on_report(server, TrainReport(server, "job-1", "server", "STARTED", server_address="127.0.0.1:4000"))
    clients = [m for _, m in sent[1:]]
    assert all(isinstance(m, TrainCommand) and m.server_address == "127.0.0.1:4000" for m in clients)
    assert len(clients) == 3
    job.on_report("a", TrainReport("a", "job-1", "client", "REFUSED", reason="no data"))
    assert not job.wait(0)  # 2 clients left: still >= min_clients
    for rnd, acc in ((0, 0.1), (1, 0.6), (2, 0.8)):
        report = TrainReport(server, "job-1", "server", "ROUND", round=rnd, accuracy=acc, clients=2)
        job.on_report(server, report)
    job.on_report("b", TrainReport("b", "job-1", "client", "ROUND", round=1, bytes_sent=10152))
    job.on_report(server, TrainReport(server, "job-other", "server", "DONE"))  # another job: ignored
    onnx = b"fake-onnx"
    job.on_report(server, TrainReport(server, "job-1", "server", "DONE", round=2,
                                      result_onnx_b64=base64.b64encode(onnx).decode(),
                                      result_sha256=hashlib.sha256(onnx).hexdigest()))
    assert job.wait(0) and results and results[0].onnx == onnx
    lineage = results[0].lineage()
    assert lineage["parent"] == {"name": "m", "version": 1}
    assert lineage["parameters"]["accuracy_per_round"] == [0.1, 0.6, 0.8]
    assert lineage["parameters"]["strategy"] == "fedavg" and lineage["dataset"] == "data:digits"
    assert results[0].bytes_per_client_round == {"b": [10152]}
    kinds = [e["type"] for e in events]
    assert kinds.count("training_round") == 3 and "training_client_lost" in kinds
    assert kinds[-1] == "training_done"


def test_job_fails_and_stops_everything_below_min_clients() -> None:
    events: list[dict[str, Any]] = []
    sent: list[tuple[str, Any]] = []
    job = _job(events, sent, [])
    job.start()
    for node in ("a", "b"):
        job.on_report(node, TrainReport(node, "job-1", "client", "FAILED", reason="killed"))
    assert not job.wait(0)  # a failed client is started again after a back-off (rejoin)
    for _ in range(CLIENT_RETRIES):  # until its retries are spent
        for node in ("a", "b"):
            job.on_report(node, TrainReport(node, "job-1", "client", "FAILED", reason="killed"))
    assert job.wait(0) and "1 client(s) left" in job.failure
    stops = [m for _, m in sent if m.action == "stop"]
    assert len(stops) == 4 - 1  # server + 3 clients, the server node is also a client: 3 distinct nodes


def test_a_result_that_does_not_match_its_digest_fails_the_job() -> None:
    job = _job([], [], [])
    job.start()
    server = job.placement.server
    job.on_report(server, TrainReport(server, "job-1", "server", "DONE", result_onnx_b64="eHl6",
                                      result_sha256="0" * 64))
    assert job.wait(0) and job.result is None and "digest" in job.failure
