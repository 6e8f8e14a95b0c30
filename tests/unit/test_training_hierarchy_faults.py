"""Faults in a cluster's part of a hierarchical job (ClusterPartJob), fake publish and clock.

A cluster aggregator that fails after it started is started again after a back-off (2, 4, 8 s),
on the same node while it is online, else on another node of the placement, at most 3 times in
a row; its clients follow its new local address. When the root aggregator moves (restarted from
its checkpoint on a new address, which the root's route answers), the part stops its aggregator
and starts it again under the new upstream.
"""

from __future__ import annotations

from typing import Any

from cluster_orchestrator.training import TrainingPlacement
from cluster_orchestrator.training_hierarchy import (
    AGGREGATOR_RETRIES,
    STOP_WAIT_S,
    UPSTREAM_CHECK_S,
    ClusterPartJob,
)
from treeline_common import topics
from treeline_common.clock import FakeClock
from treeline_common.errors import Conflict, NotFound
from treeline_common.training import TrainCommand, TrainingSpec, TrainReport
from treeline_common.training_hierarchy import TrainingPart

SPEC = TrainingSpec.from_sla({"rounds": 2, "data": "data:digits", "model": "m:1", "min_clients": 2,
                              "hierarchical": {"cluster_rounds": 1, "min_clusters": 2}})
PLACEMENT = TrainingPlacement(server="s", clients=("a", "b"))
ALL = {"s", "a", "b"}


class Harness:
    """A ClusterPartJob with recorded commands and events, a fake clock and a scripted root."""

    def __init__(self) -> None:
        self.clock = FakeClock()
        self.sent: list[tuple[str, TrainCommand]] = []
        self.events: list[dict[str, Any]] = []
        self.root_answer = "10.0.0.9:9000"
        self.job = ClusterPartJob("j1", SPEC, PLACEMENT, TrainingPart("cluster", 0, ("c1", "c2")),
                                  upstream="10.0.0.9:9000", hosts=dict.fromkeys(ALL, "127.0.0.1"),
                                  publish=lambda topic, cmd: self.sent.append((topic, cmd)),
                                  on_event=lambda _job, item: self.events.append(dict(item)),
                                  service="svc", root_address=self.ask, clock=self.clock)

    def ask(self) -> str:
        if self.root_answer == "finished":
            raise Conflict("the root aggregator of svc/0 has finished (DELETED)")
        if not self.root_answer:
            raise NotFound("not started yet")
        return self.root_answer

    def report(self, node: str, role: str, state: str, **fields: Any) -> None:
        self.job.on_report(node, TrainReport(node, "j1", role, state, **fields))

    def starts(self, role: str) -> list[tuple[str, TrainCommand]]:
        return [(t.split("/")[1], c) for t, c in self.sent if c.action == "start" and c.role == role]

    def kinds(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == kind]


def started(h: Harness, node: str = "s", address: str = "127.0.0.1:7001") -> None:
    h.report(node, "aggregator", "STARTED", server_address=address)


def test_a_failed_aggregator_is_restarted_after_a_back_off_and_its_clients_follow() -> None:
    h = Harness()
    h.job.start()
    started(h)
    assert {(n, c.server_address) for n, c in h.starts("client")} == {("a", "127.0.0.1:7001"),
                                                                      ("b", "127.0.0.1:7001")}
    h.report("s", "aggregator", "FAILED", reason="flower client exited with code 1")
    [restarted] = h.kinds("training_aggregator_restarted")
    assert restarted["node_id"] == "s" and restarted["retry_in_s"] == 2.0, restarted
    assert "cluster aggregator failed: flower client exited with code 1" in restarted["message"]
    h.job.tick(ALL)
    assert len(h.starts("aggregator")) == 1  # the back-off has not passed
    h.clock.advance(2.0)
    h.job.tick(ALL)
    [_, (node, again)] = h.starts("aggregator")
    assert node == "s" and again.upstream_address == "10.0.0.9:9000"
    started(h, address="127.0.0.1:7002")
    assert [(n, c.server_address) for n, c in h.starts("client")][2:] == [("a", "127.0.0.1:7002"),
                                                                          ("b", "127.0.0.1:7002")]
    h.report("s", "aggregator", "ROUND", round=2, loss=0.5, clients=2)
    h.report("s", "aggregator", "DONE")
    assert h.job.done and not h.job.failure


def test_restarts_are_bounded_and_back_off_like_clients() -> None:
    h = Harness()
    h.job.start()
    started(h)
    waits = []
    for attempt in range(1, AGGREGATOR_RETRIES + 2):
        h.report("s", "aggregator", "FAILED", reason=f"crash {attempt}")
        if h.job.failure:
            break
        waits.append(h.kinds("training_aggregator_restarted")[-1]["retry_in_s"])
        h.clock.advance(waits[-1])
        h.job.tick(ALL)
        started(h, address=f"127.0.0.1:{7100 + attempt}")
    assert waits == [2.0, 4.0, 8.0]
    assert "gave up after 3 aggregator restart(s)" in h.job.failure, h.job.failure
    assert {t for t, c in h.sent if c.action == "stop"} >= {topics.control_train(n) for n in ALL}


def test_an_offline_aggregator_node_moves_it_to_another_node_of_the_placement() -> None:
    h = Harness()
    h.job.start()
    started(h)
    h.job.tick({"a", "b"})
    assert h.job.aggregator == "a"
    assert ("s", "stop") in [(t.split("/")[1], c.action) for t, c in h.sent]
    h.clock.advance(2.0)
    h.job.tick({"a", "b"})
    node, command = h.starts("aggregator")[-1]
    assert node == "a" and command.server_address == "127.0.0.1:0"
    h.report("s", "aggregator", "FAILED", reason="late report of the old node")  # ignored
    assert len(h.kinds("training_aggregator_restarted")) == 1 and not h.job.failure


def test_a_moved_root_aggregator_restarts_the_cluster_aggregator_under_it() -> None:
    h = Harness()
    h.job.start()
    started(h)
    h.root_answer = ""  # the root cannot say for now: nothing happens
    h.clock.advance(UPSTREAM_CHECK_S)
    h.job.tick(ALL)
    assert not h.kinds("training_aggregator_restarted")
    h.root_answer = "10.0.0.9:9555"  # the root aggregator resumed from its checkpoint elsewhere
    h.clock.advance(UPSTREAM_CHECK_S)
    h.job.tick(ALL)
    [moved] = h.kinds("training_aggregator_restarted")
    assert "moved from 10.0.0.9:9000 to 10.0.0.9:9555" in moved["message"], moved
    assert [c.action for t, c in h.sent if t == topics.control_train("s")][-1] == "stop"
    assert len(h.starts("aggregator")) == 1  # not before its node says it stopped
    h.report("s", "aggregator", "STOPPED")
    h.job.tick(ALL)
    node, command = h.starts("aggregator")[-1]
    assert node == "s" and command.upstream_address == "10.0.0.9:9555"
    assert h.job.upstream == "10.0.0.9:9555" and not h.job.failure


def test_a_re_pointed_aggregator_starts_anyway_when_its_stop_is_not_confirmed() -> None:
    h = Harness()
    h.job.start()
    started(h)
    h.root_answer = "10.0.0.9:9555"
    h.clock.advance(UPSTREAM_CHECK_S)
    h.job.tick(ALL)
    h.clock.advance(STOP_WAIT_S)
    h.job.tick(ALL)
    assert h.starts("aggregator")[-1][1].upstream_address == "10.0.0.9:9555"


def test_an_aggregator_that_fails_before_it_started_ends_the_part_at_once() -> None:
    h = Harness()
    h.job.start()
    h.report("s", "aggregator", "FAILED", reason="no flwr")
    assert h.job.failure == "cluster aggregator failed: no flwr"
    assert not h.kinds("training_aggregator_restarted")


def test_an_aggregator_that_fails_after_the_root_finished_ends_the_part_done_not_failed() -> None:
    h = Harness()
    h.job.start()
    started(h)
    h.report("s", "aggregator", "ROUND", round=1, loss=0.5, clients=2)
    h.root_answer = "finished"  # the root part registered its result meanwhile
    h.report("s", "aggregator", "FAILED", reason="flower aggregator exited with code 1 (connection to the "
                                                 "server lost)")
    assert h.job.done and not h.job.failure and h.job.wait(0)
    assert h.kinds("training_aggregator_restarted") == []  # no restart toward a root that is gone
    [done] = h.kinds("training_cluster_done")
    assert "the root aggregator finished" in done["message"]
    assert {t.split("/")[1] for t, c in h.sent if c.action == "stop"} == {"s", "a", "b"}
