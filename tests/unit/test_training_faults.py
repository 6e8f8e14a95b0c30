"""Faults of a federated job on the cluster side (TrainingJob with a fake publish and a fake clock).

The server resumes from the last completed round's checkpoint (same node, or another node of
the placement when its node went offline), bounded; a failed client's start is sent again after
a back-off and its return is announced; node reasons become one line; the privacy spent per
round reaches the events and the lineage.
"""

from __future__ import annotations

import base64
import hashlib
from typing import Any

import pytest

from cluster_orchestrator.training import TrainingPlacement
from cluster_orchestrator.training_job import (
    CLIENT_RETRIES,
    MAX_SERVER_RESTARTS,
    TrainingJob,
    client_backoff_s,
    next_server_node,
)
from treeline_common import topics
from treeline_common.clock import FakeClock
from treeline_common.training import DP_DELTA, TrainCommand, TrainingSpec, TrainReport

SPEC = TrainingSpec.from_sla({"rounds": 4, "data": "data:digits", "model": "m:1", "min_clients": 2})
PLACEMENT = TrainingPlacement(server="a", clients=("a", "b", "c"))
JOB = "job-f"


class Harness:
    """A job with its sent commands, events and result, and helpers to play the nodes."""

    def __init__(self, spec: TrainingSpec = SPEC) -> None:
        self.sent: list[tuple[str, TrainCommand]] = []
        self.events: list[dict[str, Any]] = []
        self.results: list[Any] = []
        self.clock = FakeClock()
        self.job = TrainingJob(JOB, spec, PLACEMENT, server_host="127.0.0.1", model_url="http://x/m",
                               model_sha256="0" * 64, parent_version=1,
                               publish=lambda t, m: self.sent.append((t, m)),
                               on_event=lambda _j, e: self.events.append(dict(e)),
                               on_result=self.results.append,
                               hosts={"b": "10.0.0.2"}, clock=self.clock)

    def report(self, node: str, role: str, state: str, **fields: Any) -> None:
        self.job.on_report(node, TrainReport(node, JOB, role, state, **fields))

    def server_round(self, node: str, rnd: int, accuracy: float, **fields: Any) -> None:
        data = f"params after round {rnd}".encode()
        self.report(node, "server", "ROUND", round=rnd, accuracy=accuracy, clients=3,
                    checkpoint_b64=base64.b64encode(data).decode(),
                    checkpoint_sha256=hashlib.sha256(data).hexdigest(), **fields)

    def starts(self, role: str) -> list[tuple[str, TrainCommand]]:
        return [(t, m) for t, m in self.sent if m.action == "start" and m.role == role]

    def done(self, node: str) -> None:
        onnx = b"trained"
        self.report(node, "server", "DONE", round=SPEC.rounds,
                    result_onnx_b64=base64.b64encode(onnx).decode(),
                    result_sha256=hashlib.sha256(onnx).hexdigest())

    def kinds(self) -> list[str]:
        return [e["type"] for e in self.events]


def test_a_failed_server_resumes_from_the_last_checkpoint_and_the_history_continues() -> None:
    h = Harness()
    h.job.start()
    h.report("a", "server", "STARTED", server_address="127.0.0.1:4000")
    for rnd, acc in ((0, 0.1), (1, 0.5), (2, 0.7)):
        h.server_round("a", rnd, acc)
    h.sent.clear()
    h.report("a", "server", "FAILED", reason="flower server exited with code -9 (killed by SIGKILL)")
    [(topic, resume)] = h.starts("server")
    assert topic == topics.control_train("a")  # its node is still online: same node
    assert (resume.start_round, resume.clients) == (2, 3)
    assert base64.b64decode(resume.checkpoint_b64) == b"params after round 2"
    assert resume.checkpoint_sha256 == hashlib.sha256(b"params after round 2").hexdigest()
    assert "resuming on a after round 2 (2 round(s) left)" in h.events[-1]["message"]
    h.report("a", "server", "STARTED", server_address="127.0.0.1:4555")
    restarted = h.starts("client")
    assert sorted(t for t, _ in restarted) == [topics.control_train(n) for n in ("a", "b", "c")]
    assert {m.server_address for _, m in restarted} == {"127.0.0.1:4555"}
    h.server_round("a", 2, 0.9)  # a repeat of a recorded round is dropped
    h.server_round("a", 3, 0.8)
    h.server_round("a", 4, 0.85)
    h.done("a")
    assert h.results, h.job.failure
    params = h.results[0].lineage()["parameters"]
    assert params["accuracy_per_round"] == [0.1, 0.5, 0.7, 0.8, 0.85]
    assert params["server_restarts"] == [{"round": 2, "node": "a"}]
    assert [e["round"] for e in h.events if e["type"] == "training_round"] == [0, 1, 2, 3, 4]


def test_a_server_without_a_checkpoint_starts_over_and_a_lost_round_is_replayed() -> None:
    h = Harness()
    h.job.start()
    h.report("a", "server", "STARTED", server_address="127.0.0.1:4000")
    h.report("a", "server", "ROUND", round=0, accuracy=0.1)
    h.report("a", "server", "ROUND", round=1, accuracy=0.4)  # no checkpoint (too big to carry)
    h.sent.clear()
    h.report("a", "server", "FAILED", reason="boom")
    [(_, resume)] = h.starts("server")
    assert (resume.start_round, resume.checkpoint_b64, resume.model_url) == (0, "", "http://x/m")
    assert [r.round for r in h.job.rounds] == [0]  # round 1 will be trained and reported again


def test_server_restarts_are_bounded() -> None:
    h = Harness()
    h.job.start()
    for attempt in range(MAX_SERVER_RESTARTS + 1):
        h.report("a", "server", "STARTED", server_address=f"127.0.0.1:{4000 + attempt}")
        h.report("a", "server", "FAILED", reason=f"crash {attempt}")
    assert h.job.wait(0) and h.job.result is None
    assert h.job.failure == f"server failed: crash {MAX_SERVER_RESTARTS}; gave up after " \
                           f"{MAX_SERVER_RESTARTS} server restart(s)"
    assert len(h.starts("server")) == 1 + MAX_SERVER_RESTARTS


def test_a_server_that_fails_before_it_starts_fails_the_job_with_its_reason() -> None:
    h = Harness()
    h.job.start()
    h.report("a", "server", "FAILED", reason="starting model: the starting model has no initializer "
             "'fc1.weight': not a DigitsMlp")
    assert h.job.wait(0) and len(h.starts("server")) == 1  # not started again: it would fail the same way
    assert h.job.failure == ("server failed to start: starting model: the starting model has no "
                             "initializer 'fc1.weight': not a DigitsMlp")


def test_a_server_whose_node_goes_offline_moves_to_another_placement_node() -> None:
    h = Harness()
    h.job.start()
    h.report("a", "server", "STARTED", server_address="127.0.0.1:4000")
    h.server_round("a", 1, 0.5)
    h.job.tick(online={"a", "b", "c"})
    assert len(h.starts("server")) == 1  # all online: nothing to do
    h.job.tick(online={"b", "c"})
    topic, resume = h.starts("server")[-1]
    assert topic == topics.control_train("b") and resume.server_address == "10.0.0.2:0"
    assert resume.start_round == 1 and h.job.server == "b"
    assert (topics.control_train("a"), TrainCommand(JOB, "stop")) in h.sent
    h.report("a", "server", "ROUND", round=2, accuracy=0.99)  # the old server's late report: ignored
    assert [r.round for r in h.job.rounds] == [1]
    assert next_server_node("a", PLACEMENT, {"a", "b", "c"}) is None


def test_a_failed_client_is_started_again_after_its_back_off_and_rejoins() -> None:
    h = Harness()
    h.job.start()
    h.report("a", "server", "STARTED", server_address="127.0.0.1:4000")
    h.sent.clear()
    h.report("c", "client", "FAILED", reason="flower client exited with code 1\n"
             "Traceback (most recent call last):\n  File x\n"
             "grpc._channel._MultiThreadedRendezvous: status = StatusCode.UNAVAILABLE")
    lost = h.events[-1]
    assert lost["type"] == "training_client_lost" and "\n" not in lost["message"]
    assert lost["retry_in_s"] == client_backoff_s(1)
    h.job.tick()
    assert h.starts("client") == []  # still backing off
    h.clock.advance(client_backoff_s(1))
    h.job.tick()
    assert h.starts("client") == [(topics.control_train("c"), TrainCommand(
        JOB, "start", "client", SPEC, "127.0.0.1:4000"))]
    h.job.tick()
    assert len(h.starts("client")) == 1  # sent once per back-off
    h.report("c", "client", "STARTED")
    h.report("c", "client", "ROUND", round=3, bytes_sent=10)
    assert h.events[-1]["message"] == "client c rejoined at round 3"
    assert not h.job.wait(0)


def test_a_client_that_keeps_failing_is_given_up_and_the_job_fails_below_min_clients() -> None:
    h = Harness()
    h.job.start()
    h.report("a", "server", "STARTED", server_address="127.0.0.1:4000")
    h.report("b", "client", "REFUSED", reason="no data")  # gone for good: 2 left
    for attempt in range(1, CLIENT_RETRIES + 1):
        h.report("c", "client", "FAILED", reason="exit 1")
        assert not h.job.wait(0)
        h.clock.advance(client_backoff_s(attempt))
        h.job.tick()
    h.report("c", "client", "FAILED", reason="exit 1")
    assert h.job.wait(0) and h.job.failure == "1 client(s) left, min_clients is 2"
    assert h.events[-2]["retry_in_s"] is None


def test_the_privacy_spent_reaches_the_round_events_and_the_lineage() -> None:
    spec = TrainingSpec.from_sla({"rounds": 2, "data": "data:digits", "model": "m:1", "min_clients": 2,
                                  "differential_privacy": {"clipping_norm": 1.0, "noise_multiplier": 1.0}})
    h = Harness(spec)
    h.job.start()
    h.report("a", "server", "STARTED", server_address="127.0.0.1:4000")
    h.server_round("a", 0, 0.1)
    h.server_round("a", 1, 0.4, epsilon=3.5)
    h.server_round("a", 2, 0.6, epsilon=5.25)
    h.done("a")
    rounds = [e for e in h.events if e["type"] == "training_round"]
    assert [e["epsilon"] for e in rounds] == [None, 3.5, 5.25]
    assert "epsilon 5.25" in rounds[-1]["message"]
    params = h.results[0].lineage()["parameters"]
    spent = (params["epsilon"], params["epsilon_per_round"], params["delta"])
    assert spent == (5.25, [None, 3.5, 5.25], DP_DELTA)
    plain = Harness()
    plain.job.start()
    plain.server_round("a", 1, 0.4)
    plain.done("a")
    assert plain.results[0].lineage()["parameters"]["epsilon"] is None


@pytest.mark.parametrize(("attempt", "seconds"), [(1, 2.0), (2, 4.0), (3, 8.0), (10, 30.0)])
def test_client_backoff_doubles_up_to_a_cap(attempt: int, seconds: float) -> None:
    assert client_backoff_s(attempt) == seconds
