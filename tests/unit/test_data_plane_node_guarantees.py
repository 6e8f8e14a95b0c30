"""What a node promises its callers, over real zmq sockets on loopback.

- a request id in flight or answered lately is computed once (duplicates attach or get
  the stored reply; errors are not stored);
- a next stage that cannot be reached is reported at once, naming it (refused, lost, or
  its server closed), and the link heals when the downstream comes back;
- beyond ``max_in_flight`` a request is refused at once as overloaded, the rest answered;
- closing a node answers what it still had in flight.

Sessions are tiny Python stand-ins (counting, gated) so the tests measure the data plane,
not onnxruntime. Waits are on events or polls with deadlines.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest
import zmq
from treeline_test_helpers import start_data_plane_server as _server

from node_engine.data_plane.client import DataPlaneError, TensorClient, new_request_id
from node_engine.data_plane.ledger import Admission, Ledger
from node_engine.data_plane.server import DataPlaneServer
from node_engine.stages import LoadedStage, StageTable
from treeline_common.messages import NextStage, stage_key
from treeline_common.netutil import free_port
from treeline_common.tensor_wire import OVERLOADED, STAGE_FAILED, UNREACHABLE, TensorHeader, pack, unpack

FIRST, SECOND = stage_key("d", 0, 1), stage_key("d", 1, 1)
PROBE = stage_key("probe", 0, 1)
DEADLINE = 5.0


class Counting:
    """Returns its inputs; counts runs; optionally waits for ``gate`` (set ``started`` first)."""

    input_names: tuple[str, ...] = ()
    output_names: tuple[str, ...] = ()

    def __init__(self, gate: threading.Event | None = None, fail_first: int = 0) -> None:
        self.gate = gate
        self.fail_first = fail_first
        self.runs = 0
        self.started = threading.Event()
        self.lock = threading.Lock()

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        with self.lock:
            self.runs += 1
            failing = self.runs <= self.fail_first
        self.started.set()
        if self.gate is not None:
            assert self.gate.wait(10.0), "gate never opened"
        if failing:
            raise ValueError("failing on purpose")
        return {name: np.array(value) for name, value in inputs.items()}

    def close(self) -> None:
        pass


def _stage(key: str, session: Any, nxt: NextStage | None = None) -> LoadedStage:
    deployment, generation, index = key.split("/")
    return LoadedStage(key, deployment, int(index), "x", int(generation), session, nxt)


class Caller:
    """A raw DEALER: send with a chosen request id, receive whatever comes back."""

    def __init__(self, ctx: zmq.Context[Any], endpoint: str) -> None:
        self.sock = ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint)

    def send(self, rid: str, stage: str, value: float = 0.0) -> None:
        self.sock.send_multipart(pack("request", rid, {"x": np.full(2, value, np.float32)}, stage=stage))

    def recv(self, timeout: float = DEADLINE) -> tuple[TensorHeader, dict[str, np.ndarray]] | None:
        if not self.sock.poll(int(timeout * 1000)):
            return None
        return unpack(self.sock.recv_multipart())

    def answer(self, rid: str, timeout: float = DEADLINE) -> tuple[TensorHeader, dict[str, np.ndarray]]:
        """The next message for ``rid`` (others are skipped); fails after ``timeout``."""
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            got = self.recv(remaining)
            if got is not None and got[0].request_id == rid:
                return got
        raise AssertionError(f"no answer for {rid} within {timeout}s")


@pytest.fixture
def ctx() -> Any:
    context = zmq.Context()
    yield context
    context.destroy(linger=0)


def _probe(caller: Caller) -> None:
    """Round trip a request to the ungated probe stage: everything this caller sent before
    it has been read by the node (a ROUTER reads one connection in order)."""
    rid = new_request_id()
    caller.send(rid, PROBE)
    assert caller.answer(rid)[0].kind == "reply"


# ---------------------------------------------------------------- at most once per request id


def test_duplicate_in_flight_is_computed_once_and_answers_every_caller(servers: list[DataPlaneServer],
                                                                        ctx: Any) -> None:
    gate = threading.Event()
    session = Counting(gate)
    table = StageTable()
    table.put(_stage(FIRST, session))
    table.put(_stage(PROBE, Counting()))
    server = _server(servers, table, "dedup", workers=2)
    first, other = Caller(ctx, server.endpoint), Caller(ctx, server.endpoint)
    rid = new_request_id()
    first.send(rid, FIRST, 7.0)
    assert session.started.wait(DEADLINE)
    first.send(rid, FIRST, 7.0)  # a retry over the same connection
    other.send(rid, FIRST, 7.0)  # and one over another connection
    _probe(first)
    _probe(other)
    gate.set()
    for caller in (first, other):
        header, arrays = caller.answer(rid)
        assert header.kind == "reply" and arrays["x"].tolist() == [7.0, 7.0]
    assert first.recv(0.2) is None  # one answer per connection, not one per send
    assert session.runs == 1


def test_retried_id_gets_the_stored_reply_and_errors_are_not_stored(servers: list[DataPlaneServer]) -> None:
    session = Counting(fail_first=1)
    table = StageTable()
    table.put(_stage(FIRST, session))
    server = _server(servers, table, "cache")
    failing, answered = new_request_id(), new_request_id()
    with TensorClient(server.endpoint) as client:
        with pytest.raises(DataPlaneError, match="failing on purpose") as caught:
            client.infer(FIRST, {"x": np.ones(2, np.float32)}, request_id=failing)
        assert caught.value.code == STAGE_FAILED
        outputs, _ = client.infer(FIRST, {"x": np.ones(2, np.float32)}, request_id=failing)
        assert outputs["x"].tolist() == [1.0, 1.0] and session.runs == 2  # the error was not stored
        client.infer(FIRST, {"x": np.full(2, 3.0, np.float32)}, request_id=answered)
        # the retry carries other inputs on purpose: an answer that was computed again would show them
        outputs, _ = client.infer(FIRST, {"x": np.full(2, 9.0, np.float32)}, request_id=answered)
    assert outputs["x"].tolist() == [3.0, 3.0]
    assert session.runs == 3


def test_ledger_bounds_its_store_by_age_entries_and_bytes() -> None:
    ledger = Ledger(max_entries=2, ttl=10.0, max_bytes=100)
    envelope = [b"caller"]

    def answer(rid: str, now: float, frames: list[Any]) -> None:
        assert ledger.admit(rid, envelope, now)[0] is Admission.NEW
        assert ledger.finish(rid, frames, store=True, now=now) == [envelope]

    answer("a", 0.0, [b"x" * 10])
    assert ledger.admit("a", envelope, 9.9) == (Admission.CACHED, [b"x" * 10])
    assert ledger.admit("a", envelope, 10.0)[0] is Admission.NEW  # aged out
    assert ledger.finish("a", [b"y"], store=False, now=10.0) == [envelope] and ledger.stored() == 0
    answer("b", 11.0, [b"b"])
    answer("c", 11.0, [b"c"])
    answer("d", 11.0, [b"d"])  # a third entry pushes out the oldest
    assert ledger.admit("b", envelope, 11.0)[0] is Admission.NEW
    ledger.reject("b")
    answer("e", 12.0, [np.zeros(25, np.float32)])  # 100 bytes: the older ones leave to fit
    assert ledger.stored() == 1 and ledger.admit("d", envelope, 12.0)[0] is Admission.NEW
    answer("huge", 13.0, [b"z" * 101])  # bigger than the whole store: not kept
    assert ledger.admit("huge", envelope, 13.0)[0] is Admission.NEW
    assert ledger.admit("huge", [b"other"], 13.0)[0] is Admission.ATTACHED
    assert ledger.admit("huge", envelope, 13.0)[0] is Admission.ATTACHED
    assert ledger.finish("huge", [], store=False, now=13.0) == [envelope, [b"other"]]
    assert ledger.finish("huge", [], store=False, now=13.0) == []  # answered once


def test_ledger_keeps_nothing_for_a_request_handed_on_or_answered_to_its_entry() -> None:
    ledger = Ledger()
    entry = [b"a", "reply address"]  # a forwarded request's "caller" is its entry, not a socket
    assert ledger.admit("fwd", entry, 0.0, storable=False)[0] is Admission.NEW
    assert ledger.admit("fwd", entry, 0.0)[0] is Admission.ATTACHED
    assert ledger.finish("fwd", [b"reply"], store=True, now=0.0) == [entry]
    assert ledger.stored() == 0  # the entry keeps the reply for retries, not this node
    assert ledger.admit("next", entry, 0.0, storable=False)[0] is Admission.NEW
    ledger.hand_on("next")  # the next stage acknowledged it: nothing is held here for its answer
    assert len(ledger) == 0 and ledger.finish("next", [b"late"], store=True, now=1.0) == []


# ---------------------------------------------------------------- failing fast downstream


def _pipeline(servers: list[DataPlaneServer], downstream: str, **kwargs: Any) -> DataPlaneServer:
    table = StageTable()
    table.put(_stage(FIRST, Counting(), NextStage("b", downstream, SECOND)))
    return _server(servers, table, "a", forward_timeout=30.0, **kwargs)


def _expect_unreachable(client: TensorClient, downstream: str) -> DataPlaneError:
    started = time.monotonic()
    with pytest.raises(DataPlaneError) as caught:
        client.infer(FIRST, {"x": np.ones(2, np.float32)}, timeout=10.0)
    assert time.monotonic() - started < 2.0, "the error should come at once, not after the forward timeout"
    assert caught.value.code == UNREACHABLE
    assert downstream in str(caught.value)
    return caught.value


def test_next_stage_closed_between_requests_is_reported_at_once(servers: list[DataPlaneServer]) -> None:
    table_b = StageTable()
    table_b.put(_stage(SECOND, Counting()))
    server_b = _server(servers, table_b, "b")
    server_a = _pipeline(servers, server_b.endpoint)
    with TensorClient(server_a.endpoint) as client:
        client.infer(FIRST, {"x": np.ones(2, np.float32)})
        server_b.close()
        error = _expect_unreachable(client, server_b.endpoint)
        assert f"(stage {SECOND})" in str(error)
        _expect_unreachable(client, server_b.endpoint)  # and stays so while it is down


def test_next_stage_closing_with_the_request_in_flight_answers_at_once(
        servers: list[DataPlaneServer]) -> None:
    gate = threading.Event()
    held = Counting(gate)
    table_b = StageTable()
    table_b.put(_stage(SECOND, held))
    server_b = _server(servers, table_b, "b")
    server_a = _pipeline(servers, server_b.endpoint)
    closer = threading.Thread(target=lambda: (held.started.wait(DEADLINE), server_b.close()))
    closer.start()
    try:
        with TensorClient(server_a.endpoint) as client:
            error = _expect_unreachable(client, server_b.endpoint)
        assert "shutting down" in str(error) or "connection lost" in str(error)
    finally:
        gate.set()
        closer.join(DEADLINE)


def test_next_stage_that_vanishes_without_answering_is_reported_at_once(servers: list[DataPlaneServer],
                                                                          ctx: Any) -> None:
    """The downstream takes the request and its connection drops, no goodbye (a killed node)."""
    silent = ctx.socket(zmq.ROUTER)
    silent.setsockopt(zmq.LINGER, 0)
    port = silent.bind_to_random_port("tcp://127.0.0.1")
    downstream = f"tcp://127.0.0.1:{port}"
    server_a = _pipeline(servers, downstream)
    closer = threading.Thread(target=lambda: (silent.poll(int(DEADLINE * 1000)), silent.close(0)))
    closer.start()
    with TensorClient(server_a.endpoint) as client:
        error = _expect_unreachable(client, downstream)
    closer.join(DEADLINE)
    assert "connection lost" in str(error)


def test_nothing_listening_downstream_is_refused_at_once(servers: list[DataPlaneServer]) -> None:
    downstream = f"tcp://127.0.0.1:{free_port()}"
    server_a = _pipeline(servers, downstream)
    with TensorClient(server_a.endpoint) as client:
        error = _expect_unreachable(client, downstream)
    assert "connection refused" in str(error)


def test_link_heals_when_the_downstream_returns_on_its_port(servers: list[DataPlaneServer]) -> None:
    port = free_port()
    table_b = StageTable()
    table_b.put(_stage(SECOND, Counting()))
    server_b = _server(servers, table_b, "b", port=port)
    server_a = _pipeline(servers, server_b.endpoint)
    with TensorClient(server_a.endpoint) as client:
        client.infer(FIRST, {"x": np.ones(2, np.float32)})
        server_b.close()
        _expect_unreachable(client, server_b.endpoint)
        _server(servers, table_b, "b-again", port=port)
        deadline = time.monotonic() + DEADLINE
        while True:
            try:
                outputs, _ = client.infer(FIRST, {"x": np.full(2, 5.0, np.float32)})
                break
            except DataPlaneError as exc:
                assert exc.code == UNREACHABLE and time.monotonic() < deadline, exc
    assert outputs["x"].tolist() == [5.0, 5.0]


# ---------------------------------------------------------------- bounded in flight


def test_beyond_the_bound_requests_are_refused_at_once_and_the_rest_answered(servers: list[DataPlaneServer],
                                                                              ctx: Any) -> None:
    gate = threading.Event()
    session = Counting(gate)
    table = StageTable()
    table.put(_stage(FIRST, session))
    server = _server(servers, table, "busy", max_in_flight=2, workers=2)
    caller = Caller(ctx, server.endpoint)
    rids = [new_request_id() for _ in range(10)]
    for i, rid in enumerate(rids):
        caller.send(rid, FIRST, float(i))
    refused: list[TensorHeader] = []
    while len(refused) < 8:  # all while the two admitted ones are still held at the gate
        got = caller.recv()
        assert got is not None, f"only {len(refused)} overloaded answers"
        refused.append(got[0])
    assert not gate.is_set()
    assert {h.kind for h in refused} == {"error"} and {h.code for h in refused} == {OVERLOADED}
    assert refused[0].error == "overloaded: 2 requests in flight at busy"
    gate.set()
    answered = set(rids) - {h.request_id for h in refused}
    assert len(answered) == 2
    for _ in range(2):
        got = caller.recv()
        assert got is not None and got[0].kind == "reply" and got[0].request_id in answered
    assert session.runs == 2
    rid = new_request_id()
    caller.send(rid, FIRST, 1.0)  # the bound is free again
    assert caller.answer(rid)[0].kind == "reply"


def test_closing_a_node_answers_what_it_had_in_flight(servers: list[DataPlaneServer], ctx: Any) -> None:
    gate = threading.Event()
    session = Counting(gate)
    table = StageTable()
    table.put(_stage(FIRST, session))
    server = _server(servers, table, "leaving")
    caller = Caller(ctx, server.endpoint)
    rid = new_request_id()
    caller.send(rid, FIRST)
    assert session.started.wait(DEADLINE)
    server.close()
    gate.set()
    header, _ = caller.answer(rid)
    assert header.kind == "error" and header.code == UNREACHABLE
    assert header.error == f"node leaving ({server.endpoint}) is shutting down"
