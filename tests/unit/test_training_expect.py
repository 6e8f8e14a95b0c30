"""A client that refuses for good no longer holds up round 1.

The Flower server's first round waits (up to the join grace, 30 s) for every client the cluster
started. A client that refuses (no data file, no training extra) will never connect, so the
cluster sends the server's node an ``expect`` command with the clients left; the node engine
writes it beside the server's job file, and the server's client manager re-reads it while it
waits. A new user's trial saw round 1 sit out the whole grace (38 s) for such a client.
"""

from __future__ import annotations

import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from node_engine.training.handler import TrainingHandler
from node_engine.training.job import EXPECTED_FILE
from tests.unit.test_training_faults import Harness
from treeline_common import topics
from treeline_common.clock import FakeClock
from treeline_common.messages import encode
from treeline_common.training import TrainCommand

pytest.importorskip("flwr")
from node_engine.training.server import StartedClientsManager


def test_a_refused_client_makes_the_job_tell_the_server_to_expect_one_fewer() -> None:
    h = Harness()
    h.job.start()
    h.report("a", "server", "STARTED", server_address="127.0.0.1:4000")
    h.sent.clear()
    h.report("c", "client", "REFUSED", reason="no data for data:digits here")
    expects = [(t, m) for t, m in h.sent if m.action == "expect"]
    assert expects == [(topics.control_train("a"), TrainCommand("job-f", "expect", "server", clients=2))]
    h.sent.clear()
    h.report("b", "client", "FAILED", reason="flower client exited with code 1")  # it may come back
    assert [m for _, m in h.sent if m.action == "expect"] == []


def test_the_node_writes_the_expected_count_beside_the_running_servers_job_file(tmp_path: Path) -> None:
    reports: list[Any] = []
    handler = TrainingHandler("n1", tmp_path, reports.append, FakeClock())
    job_dir = tmp_path / "training" / "job-f" / "server"
    handler._apply(TrainCommand("job-f", "expect", "server", clients=2))  # no server of it here: nothing
    assert not (job_dir / EXPECTED_FILE).exists()
    job_dir.mkdir(parents=True)
    (job_dir / "job.json").write_text("{}")
    done = threading.Event()
    original = handler._apply

    def apply_and_signal(command: TrainCommand) -> None:
        original(command)
        done.set()

    handler._apply = apply_and_signal  # type: ignore[method-assign]
    handler.on_train(encode(TrainCommand("job-f", "expect", "server", clients=2)))  # as MQTT delivers it
    assert done.wait(5)
    assert (job_dir / EXPECTED_FILE).read_text() == "2" and reports == []


def test_the_first_round_stops_waiting_once_the_expected_count_drops(tmp_path: Path) -> None:
    manager = StartedClientsManager(3, grace_s=60, expected_file=tmp_path / EXPECTED_FILE)
    for cid in ("a", "b"):
        manager.register(SimpleNamespace(cid=cid))  # type: ignore[arg-type]
    answer: list[int] = []
    waiting = threading.Thread(target=lambda: answer.append(manager.num_available()), daemon=True)
    waiting.start()
    waiting.join(1.0)
    assert waiting.is_alive()  # 2 of 3 connected: round 1 still waits
    (tmp_path / EXPECTED_FILE).write_text("2")  # the cluster's expect, as the node engine writes it
    waiting.join(10.0)  # far below the 60 s grace
    assert not waiting.is_alive() and answer == [2]
    assert manager.expected() == 2


def test_a_missing_or_garbled_expected_file_keeps_the_started_count(tmp_path: Path) -> None:
    path = tmp_path / EXPECTED_FILE
    manager = StartedClientsManager(3, grace_s=0, expected_file=path)
    assert manager.expected() == 3
    path.write_text("not a number")
    assert manager.expected() == 3
    path.write_text("7")  # never more than the clients started
    assert manager.expected() == 3
