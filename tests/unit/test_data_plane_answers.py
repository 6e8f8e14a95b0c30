"""The answer goes straight back: real DataPlaneServers on loopback, a pipeline across nodes.

The last stage sends its answer to the entry (``reply_to``), not back through the middle
nodes; a middle node forgets a request once the next stage acknowledged it. Sessions are
tiny Python stand-ins (double the input; a gated one that waits for the test), and a "fake
node" (a bare ROUTER the test drives) plays a last stage that sends forged, duplicate and
genuine answers.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np
import pytest
import zmq
from treeline_test_helpers import start_data_plane_server as _server

from node_engine.data_plane.client import DataPlaneError, TensorClient, new_request_id
from node_engine.data_plane.security import OPEN, StageAccess
from node_engine.data_plane.server import DataPlaneServer, Held
from node_engine.stages import LoadedStage, StageTable
from treeline_common.messages import NextStage
from treeline_common.tensor_wire import (
    BAD_REQUEST,
    DOWNSTREAM_TIMEOUT,
    UNREACHABLE,
    ReplyTo,
    TensorHeader,
    authenticator,
    frames_digest,
    pack,
    signed_by,
    unpack,
)

DATA_KEY = bytes(range(32))
WRONG_KEY = bytes(range(1, 33))
DEADLINE = 5.0
X = np.arange(6, dtype=np.float32).reshape(2, 3)
NOTHING_HELD = Held(0, 0, 0)


class Doubling:
    """Doubles every input; with ``gate``, first says it started and waits for the gate."""

    input_names: tuple[str, ...] = ()
    output_names: tuple[str, ...] = ()

    def __init__(self, gate: threading.Event | None = None) -> None:
        self.gate = gate
        self.started = threading.Event()

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.started.set()
        if self.gate is not None:
            assert self.gate.wait(DEADLINE), "the test never opened the gate"
        return {name: np.asarray(value) * 2 for name, value in inputs.items()}

    def close(self) -> None:
        pass


def _stage(key: str, session: Doubling, nxt: NextStage | None = None,
           access: StageAccess = OPEN) -> LoadedStage:
    return LoadedStage(key, "d", int(key.rsplit("/", 1)[1]), "x", 1, session, nxt, access=access)


def _wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


@pytest.fixture
def ctx() -> Iterator[zmq.Context[Any]]:
    context: zmq.Context[Any] = zmq.Context()
    yield context
    context.destroy(linger=0)


def _pipeline(servers: list[DataPlaneServer], sessions: list[Doubling],
              **entry_options: Any) -> list[DataPlaneServer]:
    """One node per session, stage i on node i routed to node i+1; node 0 is the entry."""
    nodes: list[DataPlaneServer] = []
    nxt: NextStage | None = None
    for i in reversed(range(len(sessions))):
        table = StageTable()
        node = _server(servers, table, f"n{i}", **(entry_options if i == 0 else {}))
        table.put(_stage(f"d/{i}", sessions[i], nxt))
        nxt = NextStage(f"n{i}", node.endpoint, f"d/{i}")
        nodes.insert(0, node)
    return nodes


def test_the_last_stage_answers_the_entry_after_the_middle_node_is_gone(
        servers: list[DataPlaneServer]) -> None:
    gate = threading.Event()
    last = Doubling(gate)
    entry, middle, _ = _pipeline(servers, [Doubling(), Doubling(), last])
    with TensorClient(entry.endpoint) as client:
        result: dict[str, Any] = {}
        caller = threading.Thread(target=lambda: result.update(out=client.infer("d/0", {"x": X},
                                                                               timeout=DEADLINE)))
        caller.start()
        assert last.started.wait(DEADLINE)
        # the middle node handed the request on: it holds nothing for it, no reply state, no timeout
        _wait_for(lambda: middle.held() == NOTHING_HELD, "the middle node to forget the request")
        assert entry.held().awaiting_answer == 1
        middle.close()  # nothing can come back through it now
        gate.set()
        caller.join(DEADLINE)
    outputs, timings = result["out"]
    np.testing.assert_array_equal(outputs["x"], X * 8)
    assert set(timings) == {"d/0", "d/1", "d/2"}
    assert entry.held() == NOTHING_HELD


def test_an_error_past_the_middle_goes_straight_to_the_entry(servers: list[DataPlaneServer]) -> None:
    entry, _, last = _pipeline(servers, [Doubling(), Doubling(), Doubling()])
    last.close()
    with TensorClient(entry.endpoint) as client, pytest.raises(DataPlaneError) as raised:
        client.infer("d/0", {"x": X}, timeout=DEADLINE)
    assert raised.value.code == UNREACHABLE
    assert last.endpoint in str(raised.value) and "n1" in str(raised.value)


def test_a_middle_node_that_dies_after_its_ack_costs_one_pipeline_deadline(
        servers: list[DataPlaneServer]) -> None:
    stuck = Doubling(threading.Event())  # never opened: the middle node "hangs" after its ack
    entry, middle, _ = _pipeline(servers, [Doubling(), stuck, Doubling()], forward_timeout=0.5)
    with TensorClient(entry.endpoint) as client, pytest.raises(DataPlaneError) as raised:
        client.infer("d/0", {"x": X}, timeout=DEADLINE)
    assert raised.value.code == DOWNSTREAM_TIMEOUT
    assert "d/1" in str(raised.value) and middle.endpoint in str(raised.value)
    assert entry.held() == NOTHING_HELD
    assert stuck.gate is not None
    stuck.gate.set()


class FakeLastStage:
    """A bare ROUTER standing in for the last stage: acks requests, sends answers the test makes."""

    def __init__(self, ctx: zmq.Context[Any]) -> None:
        self.router = ctx.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.LINGER, 0)
        self.endpoint = f"tcp://127.0.0.1:{self.router.bind_to_random_port('tcp://127.0.0.1')}"
        self.dealer = ctx.socket(zmq.DEALER)
        self.dealer.setsockopt(zmq.LINGER, 0)

    def take_request(self, last: bool = True) -> tuple[TensorHeader, list[Any]]:
        """Receive one forwarded request, ack it (as its last stage), and connect to its reply address."""
        assert self.router.poll(int(DEADLINE * 1000)), "no request reached the last stage"
        identity, *frames = self.router.recv_multipart()
        header, _ = unpack(frames)
        assert header.reply_to is not None
        self.router.send_multipart([identity, TensorHeader("ack", header.request_id, last=last).to_bytes()])
        if not self.dealer.get(zmq.LAST_ENDPOINT):
            self.dealer.connect(header.reply_to.endpoint)
        return header, frames[1:]

    def answer(self, reply_to: ReplyTo, value: np.ndarray, key: bytes = b"", rid: str = "") -> None:
        header_bytes, array = pack("answer", rid or reply_to.request_id, {"x": value}, stage="d/1")
        header = TensorHeader.from_bytes(header_bytes)
        if key:
            header.auth = authenticator(key, header, frames_digest([array]))
        self.dealer.send_multipart([header.to_bytes(), array])

    def close(self) -> None:
        self.router.close(0)
        self.dealer.close(0)


@pytest.fixture
def fake_last(ctx: zmq.Context[Any]) -> Iterator[FakeLastStage]:
    fake = FakeLastStage(ctx)
    yield fake
    fake.close()


def _entry_before(fake: FakeLastStage, servers: list[DataPlaneServer], key: bytes,
                  **options: Any) -> DataPlaneServer:
    table = StageTable()
    entry = _server(servers, table, "entry", **options)
    table.put(_stage("d/0", Doubling(), NextStage("fake", fake.endpoint, "d/1"),
                     StageAccess(data_key=key, entry=True)))
    return entry


def _caller(ctx: zmq.Context[Any], endpoint: str) -> zmq.Socket[Any]:
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    return sock


def _reply(caller: zmq.Socket[Any]) -> tuple[TensorHeader, dict[str, np.ndarray]]:
    assert caller.poll(int(DEADLINE * 1000)), "the caller got no reply"
    return unpack(caller.recv_multipart())


def test_a_forged_answer_is_refused_and_the_signed_one_admitted(
        ctx: zmq.Context[Any], fake_last: FakeLastStage, servers: list[DataPlaneServer]) -> None:
    entry = _entry_before(fake_last, servers, DATA_KEY)
    caller = _caller(ctx, entry.endpoint)
    rid = new_request_id()
    caller.send_multipart(pack("request", rid, {"x": X}, stage="d/0"))
    header, tensors = fake_last.take_request()
    assert signed_by(header, tensors, [DATA_KEY])  # the forward is signed, reply_to included
    reply_to = header.reply_to
    assert reply_to is not None and reply_to.request_id == rid and reply_to.endpoint == entry.endpoint
    forged = ReplyTo(reply_to.endpoint, rid, "")
    fake_last.answer(forged, np.full_like(X, -1))  # unsigned
    fake_last.answer(forged, np.full_like(X, -2), key=WRONG_KEY)  # signed with another key
    fake_last.answer(forged, np.full_like(X, -3), key=DATA_KEY, rid=new_request_id())  # no such request
    fake_last.answer(reply_to, X * 4, key=DATA_KEY)  # the genuine one: the same connection, after the rest
    got, outputs = _reply(caller)
    assert (got.kind, got.request_id) == ("reply", rid)
    np.testing.assert_array_equal(outputs["x"], X * 4)
    caller.close(0)


def test_a_duplicate_answer_is_dropped(ctx: zmq.Context[Any], fake_last: FakeLastStage,
                                       servers: list[DataPlaneServer]) -> None:
    entry = _entry_before(fake_last, servers, b"")
    caller = _caller(ctx, entry.endpoint)
    first, second = new_request_id(), new_request_id()
    caller.send_multipart(pack("request", first, {"x": X}, stage="d/0"))
    header, _ = fake_last.take_request()
    assert header.reply_to is not None
    fake_last.answer(header.reply_to, X * 4)
    fake_last.answer(header.reply_to, X * 5)  # the same answer again (a retried send)
    caller.send_multipart(pack("request", second, {"x": X}, stage="d/0"))
    header, _ = fake_last.take_request()
    assert header.reply_to is not None
    fake_last.answer(header.reply_to, X * 6)
    replies = [_reply(caller) for _ in range(2)]
    assert [(h.request_id, float(out["x"][0, 1])) for h, out in replies] == [(first, 4.0), (second, 6.0)]
    _wait_for(lambda: entry.held() == NOTHING_HELD, "the entry to hold nothing")
    caller.close(0)


def test_a_caller_may_not_choose_where_the_entry_answers(ctx: zmq.Context[Any], fake_last: FakeLastStage,
                                                          servers: list[DataPlaneServer]) -> None:
    entry = _entry_before(fake_last, servers, b"")
    caller = _caller(ctx, entry.endpoint)
    elsewhere = ReplyTo(fake_last.endpoint, "x")
    caller.send_multipart(pack("request", new_request_id(), {"x": X}, stage="d/0", reply_to=elsewhere))
    got, _ = _reply(caller)
    assert got.kind == "error" and got.code == BAD_REQUEST and "reply_to" in got.error
    caller.close(0)


@pytest.mark.parametrize(("last", "code"), [(True, UNREACHABLE), (False, DOWNSTREAM_TIMEOUT)])
def test_losing_the_node_that_was_to_answer_fails_at_once(
        ctx: zmq.Context[Any], fake_last: FakeLastStage, servers: list[DataPlaneServer],
        last: bool, code: str) -> None:
    """The next node acked as the last stage and died: unreachable at once, not after the deadline.

    Had it handed the request on (``last`` False), a later stage might still answer: the entry
    waits for the pipeline's deadline (short here).
    """
    entry = _entry_before(fake_last, servers, b"", forward_timeout=2.0 if not last else 30.0)
    caller = _caller(ctx, entry.endpoint)
    caller.send_multipart(pack("request", new_request_id(), {"x": X}, stage="d/0"))
    fake_last.take_request(last=last)
    _wait_for(lambda: entry.held().awaiting_ack == 0, "the entry to take the ack")
    started = time.monotonic()
    fake_last.close()  # the node dies holding the request
    got, _ = _reply(caller)
    assert (got.kind, got.code) == ("error", code)
    assert time.monotonic() - started < (1.5 if last else DEADLINE)
    caller.close(0)


def test_the_entry_times_each_answered_request_end_to_end(servers: list[DataPlaneServer]) -> None:
    """The entry's counters hold the time from a request's arrival to its answer leaving (every
    later stage included); inner stages time nothing end to end; an error is not timed."""
    gate = threading.Event()
    gate.set()
    tables = [StageTable(), StageTable()]
    last_node = _server(servers, tables[1], "n1")
    last = _stage("d/1", Doubling(gate))
    tables[1].put(last)
    entry_node = _server(servers, tables[0], "n0")
    entry = _stage("d/0", Doubling(), NextStage("n1", last_node.endpoint, "d/1"))
    tables[0].put(entry)
    with TensorClient(entry_node.endpoint) as client:
        started = time.monotonic()
        for _ in range(3):
            client.infer("d/0", {"x": X}, timeout=DEADLINE)
        elapsed_ms = (time.monotonic() - started) * 1000.0
        answered, mean_ms = entry.counters.end_to_end()
        assert answered == 3 and 0.0 < mean_ms * 3 <= elapsed_ms
        assert last.counters.end_to_end() == (0, 0.0)  # answers the entry, not a caller
        last_node.close()
        with pytest.raises(DataPlaneError):
            client.infer("d/0", {"x": X}, timeout=DEADLINE)
    assert entry.counters.end_to_end()[0] == 3
