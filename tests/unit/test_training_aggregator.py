"""The cluster aggregator of a hierarchical job: its fit (fake local run), the clients' session
loop, and the node's start of an aggregator process (STARTED at once, idempotent, stopped)."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("flwr")
pytest.importorskip("torch")

from test_training_faults_node import Reports

from node_engine.training.aggregator import ClusterAggregator, LocalRun
from node_engine.training.client import serve_sessions
from node_engine.training.handler import TrainingHandler
from node_engine.training.job import JobFile
from treeline_common.clock import SystemClock
from treeline_common.messages import encode
from treeline_common.netutil import free_port
from treeline_common.training import TrainCommand, TrainingSpec

SPEC = TrainingSpec.from_sla({"rounds": 3, "data": "data:digits", "model": "m:1", "min_clients": 2,
                              "hierarchical": {"cluster_rounds": 4}})


def test_fit_runs_k_local_rounds_from_the_global_parameters_and_answers_their_aggregate() -> None:
    runs: list[LocalRun] = []

    def local(run: LocalRun) -> tuple[list[np.ndarray], int, float]:
        runs.append(run)
        return [p + 1 for p in run.parameters], 321, 0.5

    job = JobFile(SPEC, "127.0.0.1:4000", "", clients=3, upstream_address="127.0.0.1:5000")
    aggregator = ClusterAggregator(job, local)
    global_params = [np.zeros((2, 2), np.float32), np.ones(3, np.float32)]
    config: dict[str, Any] = {"round": 2, "local_epochs": 5, "batch_size": 8, "learning_rate": 0.3,
                              "proximal_mu": 0.1, "unrelated": 1}
    arrays, examples, metrics = aggregator.fit(global_params, config)
    [run] = runs
    assert (run.address, run.rounds, run.expected, run.min_clients) == ("127.0.0.1:4000", 4, 3, 2)
    assert run.round_offset == 4  # global round 2 after one round of 4 local rounds
    assert run.fit_config == {"local_epochs": 5, "batch_size": 8, "learning_rate": 0.3, "proximal_mu": 0.1}
    np.testing.assert_array_equal(run.parameters[1], global_params[1])
    assert examples == 321 and metrics == {"train_loss": 0.5}
    np.testing.assert_array_equal(arrays[0], np.ones((2, 2)))
    assert aggregator.get_parameters({})[0] is arrays[0]


def test_an_aggregator_needs_a_hierarchical_job() -> None:
    flat = TrainingSpec.from_sla({"rounds": 1, "data": "data:digits", "model": "m:1"})
    with pytest.raises(ValueError, match="hierarchical"):
        ClusterAggregator(JobFile(flat, "127.0.0.1:1", ""))


def test_a_client_runs_a_session_each_time_its_aggregator_listens_and_ends_when_none_comes() -> None:
    port = free_port()
    listener = socket.create_server(("127.0.0.1", port))
    sessions: list[int] = []

    def session() -> None:
        sessions.append(1)
        if len(sessions) == 2:
            raise ConnectionError("the local server went away")  # counted, and the loop goes on
        if len(sessions) == 3:
            listener.close()  # the job is over: nothing listens any more

    assert serve_sessions(f"127.0.0.1:{port}", session, wait_s=1.0) == 3



def test_the_node_starts_an_aggregator_at_once_on_a_picked_port_and_repeats_idempotently(
        tmp_path: Path) -> None:
    reports = Reports()
    handler = TrainingHandler("n1", tmp_path, reports, SystemClock())
    start = TrainCommand("job-a", "start", "aggregator", SPEC, "127.0.0.1:0", clients=2,
                         upstream_address="127.0.0.1:9")  # no root aggregator: it keeps trying
    try:
        handler.on_train(encode(start))
        [started] = reports.wait("STARTED")
        host, _, port = started.server_address.rpartition(":")
        assert host == "127.0.0.1" and int(port) > 0  # reported before its local server exists
        job = JobFile.read(tmp_path / "training" / "job-a" / "aggregator" / "job.json")
        assert (job.upstream_address, job.address, job.clients) == ("127.0.0.1:9", started.server_address, 2)
        pid = handler._children[("job-a", "aggregator")].process.pid
        handler.on_train(encode(start))
        [_, again] = reports.wait("STARTED", 2)
        assert again.server_address == started.server_address
        assert handler._children[("job-a", "aggregator")].process.pid == pid
        handler.on_train(encode(TrainCommand("job-a", "stop")))
        reports.wait("STOPPED")
        assert not [r for r in reports.items if r.state in ("FAILED", "REFUSED")], reports.items
    finally:
        handler.close()
