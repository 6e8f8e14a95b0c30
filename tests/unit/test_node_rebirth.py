"""The node's answer to statuses on its own topic: the pure reaction table and the worker.

The worker's transport is faked (``renew`` and ``republish`` record calls), so these tests
check the decisions, the seq arithmetic and the rate limit without a broker; the real
round trip is in ``tests/integration/test_node_rebirth_mqtt.py``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
from treeline_test_helpers import DEADLINE

from node_engine.daemon import IGNORE, REBIRTH, REPUBLISH, Liveness, status_reaction
from treeline_common.clock import SystemClock
from treeline_common.messages import NodeStatus, encode

NODE = "node-a"
SEQ = 100


@pytest.mark.parametrize(("state", "seq", "node_id", "leaving", "expected"), [
    ("online", SEQ, NODE, False, IGNORE),        # our own birth echoed back
    ("online", SEQ - 1, NODE, False, IGNORE),    # a stale birth: harmless
    ("online", SEQ + 1, NODE, False, REBIRTH),   # would make the cluster dismiss our will
    ("offline", SEQ - 1, NODE, False, REPUBLISH),  # our previous will replayed, or a stale spoof
    ("offline", SEQ, NODE, False, REBIRTH),      # our current will is never published while we live
    ("offline", SEQ + 5, NODE, False, REBIRTH),  # a spoof that outranks our birth
    ("offline", SEQ, NODE, True, IGNORE),        # our own shutdown status
    ("offline", SEQ + 5, NODE, True, IGNORE),    # leaving: nothing to defend
    ("offline", SEQ + 5, "node-b", False, IGNORE),  # somebody else's status
])
def test_status_reaction(state: str, seq: int, node_id: str, leaving: bool, expected: str) -> None:
    assert status_reaction(NodeStatus(node_id, state, seq), NODE, SEQ, leaving) == expected


class Transport:
    """Records the worker's calls; ``renew`` arms a new will as MqttLink's pre-connect hook does."""

    def __init__(self) -> None:
        self.liveness: Liveness | None = None
        self.calls: list[tuple[str, int, float]] = []
        self.cond = threading.Condition()

    def renew(self) -> bool:
        assert self.liveness is not None
        seq = self.liveness.next_will().seq
        self._record("renew", seq)
        return True

    def republish(self) -> None:
        assert self.liveness is not None
        self._record("republish", self.liveness.birth().seq)

    def _record(self, kind: str, seq: int) -> None:
        with self.cond:
            self.calls.append((kind, seq, time.monotonic()))
            self.cond.notify_all()

    def wait_calls(self, n: int) -> list[tuple[str, int, float]]:
        with self.cond:
            assert self.cond.wait_for(lambda: len(self.calls) >= n, DEADLINE), f"calls: {self.calls}"
            return list(self.calls)


@pytest.fixture
def wired() -> Iterator[tuple[Liveness, Transport]]:
    transport = Transport()
    liveness = Liveness(NODE, SEQ, SystemClock(), republish=transport.republish, renew=transport.renew,
                        interval=0.3)
    transport.liveness = liveness
    liveness.start()
    yield liveness, transport
    liveness.close()


def _status(state: str, seq: int) -> bytes:
    return encode(NodeStatus(NODE, state, seq))


def test_foreign_offline_above_our_seq_renews_the_session_above_it(wired: tuple[Liveness, Transport]) -> None:
    liveness, transport = wired
    liveness.on_status(_status("offline", SEQ + 1000))
    [(kind, seq, _)] = transport.wait_calls(1)
    assert kind == "renew" and seq == SEQ + 1001 and liveness.seq == SEQ + 1001
    assert liveness.birth().seq == SEQ + 1001 and liveness.birth().state == "online"


def test_stale_offline_republishes_the_birth_without_a_new_session(wired: tuple[Liveness, Transport]) -> None:
    liveness, transport = wired
    liveness.on_status(_status("offline", SEQ - 3))
    assert transport.wait_calls(1)[0][:2] == ("republish", SEQ)
    assert liveness.seq == SEQ


def test_reactions_are_rate_limited_and_merged_never_dropped(wired: tuple[Liveness, Transport]) -> None:
    liveness, transport = wired
    liveness.on_status(_status("offline", SEQ + 10))
    first = transport.wait_calls(1)[0]
    # a burst while the worker is paused: merged into ONE reaction, above the highest seq seen
    for seq in (SEQ + 50, SEQ - 1, SEQ + 20):
        liveness.on_status(_status("offline", seq))
    calls = transport.wait_calls(2)
    second = calls[1]
    assert second[0] == "renew" and second[1] == SEQ + 51
    assert second[2] - first[2] >= 0.3 - 0.01, "two reactions within the rate-limit interval"
    # our own new birth echoed back is no reason to react: nothing is pending afterwards
    liveness.on_status(_status("online", liveness.seq))
    assert not liveness._wake.is_set()
    liveness.close()
    assert len(transport.calls) == 2


def test_own_statuses_bad_payloads_and_leaving_are_ignored(wired: tuple[Liveness, Transport]) -> None:
    liveness, transport = wired
    liveness.on_status(_status("online", SEQ))
    liveness.on_status(b"\x00 not json")
    liveness.on_status(b"[" * 100_000)
    liveness.on_status(encode(NodeStatus("node-b", "offline", SEQ + 9)))
    offline = liveness.leave()
    assert offline.state == "offline" and offline.seq == SEQ
    liveness.on_status(encode(offline))  # our own shutdown status comes back
    liveness.on_status(_status("offline", SEQ + 9))
    assert transport.calls == []


def test_each_will_gets_a_new_larger_seq() -> None:
    liveness = Liveness(NODE, SEQ, SystemClock(), republish=lambda: None, renew=lambda: None)
    seqs = [liveness.next_will().seq for _ in range(3)]
    assert seqs == [SEQ + 1, SEQ + 2, SEQ + 3] and liveness.birth().seq == SEQ + 3
