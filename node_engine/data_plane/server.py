"""The tensor server: one zmq ROUTER serving every stage a node holds, plus forwarding.

Threading model (zmq sockets are not thread-safe, so exactly one thread touches them):

- the **poll thread** owns the ROUTERs, the downstream links (:mod:`.downstream`), the
  request ledger (:mod:`.ledger`), the awaited answers (:mod:`.answers`) and the wake
  socket; it reads requests and answers, acknowledges forwarded requests, hands work to
  workers, sends replies (:mod:`.replies`), answers and forwards;
- **worker threads** (:mod:`.workers`) run partitions (:mod:`.chain`; onnxruntime releases
  the GIL; the emulated slowdown waits there) and hand results back through a queue plus a
  one-frame inproc wake. Only a stage whose last runs each took under 0.2 ms, slowdown
  included, runs on the poll thread instead: less than the hand-off costs
  (:class:`~.workers.InlinePolicy`; one slower run sends it back to the workers).

**The answer goes straight back** (details in :mod:`.answers`). The node a caller sends a
request to is its *entry*; a forward to another node carries ``reply_to`` (the entry's
endpoint, CURVE when the forward is, and the caller's id) and the entry awaits the answer
under ONE deadline for the whole pipeline (``forward_timeout``). A receiver acknowledges a
``reply_to`` request at once (``ack``, poll thread, before compute); a middle node forgets
it on the next stage's ack. The last stage, or any stage that fails or cannot reach the
next, sends the reply or error as a signed ``answer`` to ``reply_to``; the entry admits it
only for a request it awaits, signed and over the socket it expects, and only once. A
request without ``reply_to`` (a caller's, or an older node's) is answered to its sender.

Contract with callers (a request is identified by its caller-chosen request id):

- **at most once per id**: an id already in flight here is not computed again, the retry
  gets the same answer; an id answered in the last ``reply_ttl`` seconds gets the stored
  reply (bounded: ``reply_cache`` entries);
- **bounded**: at most ``max_in_flight`` requests (computing, waiting for the emulated
  link, for a downstream's ack, or, at the entry, for the pipeline's answer) are in
  flight; beyond that a new request is answered at once with an ``overloaded`` error
  (code :data:`~treeline_common.tensor_wire.OVERLOADED`) instead of queueing without bound;
- **fail fast**: a downstream that cannot be reached yields an ``unreachable`` error naming
  it within about ``connect_timeout`` (at once when its connection is known lost), sent to
  the entry at once; so does losing the entry's next node while it holds requests it acked
  as their last stage; one that is connected but silent (no ack), and a pipeline whose
  answer does not reach the entry, a ``downstream_timeout`` error after ``forward_timeout``;
- every error carries a code from :data:`~treeline_common.tensor_wire.ERROR_CODES`;
- on :meth:`close` every request still in flight here is answered with ``unreachable``
  (requests already acknowledged by a later stage are not here any more).

A next stage on this same node (either of its endpoints) is run in-process: the arrays are
handed over without touching a socket.

Security (:mod:`.security`, :mod:`.replies`): with ``curve_secret_key`` a second ROUTER,
``curve_endpoint``, is a CURVE server on the same poll thread; replies leave on the socket the
request came in on. A stage's :class:`~.security.StageAccess` is applied before the ledger
(``unauthorized``); forwards are signed with the data key. An entry stage refuses a request
carrying ``reply_to``; an inner stage of a keyed deployment admits it only signed.

An emulated node charges its uplink before a forward leaves (:mod:`.uplink`), while the
workers go on computing.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any

import zmq

from node_engine.data_plane.answers import AwaitedAnswers, caller_frames
from node_engine.data_plane.chain import Job, Result, StageChain
from node_engine.data_plane.downstream import Downstreams, TransferObserver
from node_engine.data_plane.forwarding import Forward
from node_engine.data_plane.ledger import Admission, Ledger
from node_engine.data_plane.probe import PROBE_STAGE, probe_reply
from node_engine.data_plane.replies import Replies, answer_envelope, split_envelope
from node_engine.data_plane.sockets import bind_router, readable
from node_engine.data_plane.uplink import Uplink
from node_engine.data_plane.workers import Workers
from node_engine.stages import LoadedStage, StageRunner, StageTable
from treeline_common.clock import Clock, SystemClock
from treeline_common.request_context import stage_log_context
from treeline_common.tensor_wire import (
    BAD_REQUEST,
    OVERLOADED,
    UNAUTHORIZED,
    UNKNOWN_STAGE,
    UNREACHABLE,
    FramingError,
    TensorHeader,
    pack,
    unpack,
)

log = logging.getLogger(__name__)

POLL_MS = 100  # longest the poll loop blocks (stop flag, deadlines); link due times cut it shorter
ACCEPT_BATCH = 32  # requests read per loop turn before results and downstream replies get their turn
SHUTDOWN_LINGER_MS = 200  # how long close() lets the last error replies leave


@dataclass(frozen=True)
class Held:
    """Per-request state a node holds (read from another thread: a snapshot, for tests and stats)."""

    in_flight: int  # requests in the ledger (computing, queued for the link, awaiting an ack or answer)
    awaiting_ack: int  # forwards sent and not yet acknowledged (or answered, by an older downstream)
    awaiting_answer: int  # requests this node is the entry of, whose answer comes straight back


class DataPlaneServer:
    """Serves the stages in ``stages`` on ``tcp://host:port`` (port 0: a free one).

    The constructor does no I/O; :meth:`start` binds and starts the poll thread, after
    which :attr:`endpoint` is the address to advertise, and with ``curve_secret_key`` (a
    Z85 CURVE secret key, e.g. from ``zmq.curve_keypair()``) also :attr:`curve_endpoint`
    (on ``curve_port``, 0: a free one) and :attr:`curve_public_key`. :meth:`close` is idempotent.
    See the module docstring for the contract and the meaning of each bound. ``on_transfer``
    hears every answered forward's passive link sample (see :data:`.downstream.TransferObserver`).
    """

    def __init__(
        self,
        stages: StageTable,
        runner: StageRunner,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        max_in_flight: int = 32,
        workers: int = 2,
        forward_timeout: float = 10.0,
        connect_timeout: float = 1.0,
        reply_cache: int = 1024,
        reply_ttl: float = 30.0,
        clock: Clock | None = None,
        name: str = "node",
        curve_secret_key: bytes | None = None,
        curve_port: int = 0,
        on_transfer: TransferObserver | None = None,
    ) -> None:
        self._stages = stages
        self._runner = runner
        self._host = host
        self._port = port
        self._max_in_flight = max_in_flight
        self._workers = workers
        self._forward_timeout = forward_timeout
        self._connect_timeout = connect_timeout
        self._clock = clock or SystemClock()
        self._name = name
        self._ledger = Ledger(max_entries=reply_cache, ttl=reply_ttl)
        self._errors: dict[str, int] = {}  # error answers sent, by code; only the poll thread writes
        self._ctx: zmq.Context[Any] | None = None
        self._router: zmq.Socket[Any] | None = None
        self._curve_router: zmq.Socket[Any] | None = None
        self._curve_secret_key = curve_secret_key
        self._curve_port = curve_port
        self._on_transfer = on_transfer
        self.curve_public_key = zmq.curve_public(curve_secret_key).decode() if curve_secret_key else ""
        self.curve_endpoint = ""
        self._chain = StageChain(stages, runner, self._local, name)
        self._answers = AwaitedAnswers(forward_timeout)
        self._downstream: Downstreams | None = None  # the poll thread's, while it runs
        self._replies: Replies | None = None  # the poll thread's, while it runs
        self._compute: Workers | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._closed = False
        self.endpoint = ""

    def held(self) -> Held:
        """How much per-request state this node holds now (see :class:`Held`)."""
        downstream = self._downstream
        return Held(len(self._ledger), downstream.pending() if downstream is not None else 0,
                    len(self._answers))

    def errors(self) -> dict[str, int]:
        """Error answers this node sent, by code, since start (a copy; read from any thread)."""
        return self._errors.copy()

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> str:
        """Bind the ROUTER, start workers and the poll thread; return the endpoint."""
        self._ctx = zmq.Context()
        self._router, self.endpoint = bind_router(self._ctx, self._host, self._port)
        if self._curve_secret_key:
            self._curve_router, self.curve_endpoint = bind_router(self._ctx, self._host, self._curve_port,
                                                                  self._curve_secret_key)
        self._compute = Workers(self._ctx, str(id(self)), self._workers, self._chain.run, self._clock)
        self._compute.start()
        self._thread = threading.Thread(target=self._loop, name="data-plane", daemon=True)
        self._thread.start()
        log.info("data plane serving on %s%s", self.endpoint,
                 f" and {self.curve_endpoint} (CURVE)" if self.curve_endpoint else "")
        return self.endpoint

    def close(self, timeout: float = 2.0) -> None:
        """Stop the poll thread, answer in-flight requests with an error and close every socket."""
        if self._closed:
            return
        self._closed = True
        self._stopping.set()
        if self._compute is not None:
            self._compute.close()  # rings the poll thread on its way
        if self._thread is not None:
            self._thread.join(timeout)
        if self._ctx is not None and (self._thread is None or not self._thread.is_alive()):
            self._ctx.term()  # every socket is closed by now, so this does not block
        log.info("data plane %s closed", self.endpoint)

    # ------------------------------------------------------------------ poll thread

    def _loop(self) -> None:
        assert self._router is not None and self._compute is not None and self._ctx is not None
        compute = self._compute
        wake = compute.wake
        routers = [self._router, *([self._curve_router] if self._curve_router is not None else [])]
        poller = zmq.Poller()
        poller.register(wake, zmq.POLLIN)
        for router in routers:
            poller.register(router, zmq.POLLIN)
        downstream = Downstreams(self._ctx, poller, name=self._name, timeout=self._forward_timeout,
                                 connect_timeout=self._connect_timeout, on_transfer=self._on_transfer,
                                 on_ack=self._acked, on_down=self._lost)
        self._downstream = downstream
        self._replies = Replies(self._router, self._curve_router, downstream, self._clock,
                                endpoint=self.endpoint, curve_endpoint=self.curve_endpoint,
                                curve_public_key=self.curve_public_key)
        uplink = Uplink(downstream, self._runner.link_delay_ms)
        try:
            while not self._stopping.is_set():
                now = self._clock.monotonic()
                timeout_ms = downstream.poll_timeout_ms(uplink.poll_timeout_ms(now, POLL_MS))
                events = dict(poller.poll(timeout_ms))
                if wake in events:
                    for result in compute.finished():
                        self._dispatch(uplink, result)
                for sock in downstream.sockets():
                    if sock in events:
                        downstream.handle(sock, self._clock.monotonic(), self._finish)
                for router in routers:
                    if router in events:
                        for _ in range(ACCEPT_BATCH):
                            self._accept(router, downstream, uplink)
                            if not readable(router):
                                break
                now = self._clock.monotonic()
                uplink.send_due(now, self._finish)
                downstream.tick(now, self._finish)
                for rid, frames in self._answers.expired(now):
                    self._finish(rid, frames, "error")
        except zmq.ContextTerminated:
            pass
        except Exception:
            log.exception("data plane poll loop failed")
        finally:
            uplink.drop()
            answered = self._answer_all_closing()
            downstream.close(SHUTDOWN_LINGER_MS if answered else 0)
            self._downstream = self._replies = None
            for router in routers:
                router.close(SHUTDOWN_LINGER_MS if answered else 0)
            compute.close_pull()

    def _accept(self, router: zmq.Socket[Any], downstream: Downstreams, uplink: Uplink) -> None:
        """Read one message: answer it at once (error, duplicate, overload) or take it into flight."""
        frames = router.recv_multipart(copy=False)
        over_curve = router is self._curve_router
        envelope, body = split_envelope(frames, over_curve)
        try:
            header, arrays = unpack(body)
        except FramingError as exc:
            log.warning("dropping malformed data-plane message: %s", exc)
            self._errors[BAD_REQUEST] = self._errors.get(BAD_REQUEST, 0) + 1
            self._send(envelope, pack("error", "", {}, error=f"malformed message: {exc}", code=BAD_REQUEST))
            return
        rid = header.request_id

        def refuse(message: str, code: str) -> None:
            self._errors[code] = self._errors.get(code, 0) + 1
            self._send(envelope, pack("error", rid, {}, stage=header.stage, error=message, code=code))

        if header.kind == "answer":
            self._take_answer(header, body[1:], over_curve)
            return
        if header.kind != "request" or not rid:
            refuse(f"expected a request with an id, got {header.kind!r} id {rid!r}", BAD_REQUEST)
            return
        if header.stage == PROBE_STAGE:  # a link probe (see .probe): answered at once, nothing kept
            self._send(envelope, probe_reply(header))
            return
        stage = self._stages.get(header.stage)
        refusal = stage.access.refusal(header, body[1:], over_curve) if stage is not None else ""
        if refusal:
            with stage_log_context(rid, header.stage):  # a refusal only: never on the accepted path
                log.warning("refusing stage %s on %s: %s", header.stage,
                            "CURVE" if over_curve else "plain TCP", refusal)
            refuse(refusal, UNAUTHORIZED)
            return
        reply_to = header.reply_to
        if reply_to is not None and stage is not None and stage.access.entry:
            refuse(f"stage {header.stage} is a service's entry: callers may not set reply_to", BAD_REQUEST)
            return
        # a forwarded request's caller is its entry: the answer goes there, signed, and is not stored here
        waiting = envelope if reply_to is None or stage is None \
            else answer_envelope(reply_to, stage.access.signing_key)
        admission, stored = self._ledger.admit(
            rid, waiting, self._clock.monotonic(), storable=reply_to is None,
            timer=stage.counters.add_end_to_end if reply_to is None and stage is not None else None)
        if admission is Admission.ATTACHED:
            log.debug("request %s is already in flight here; the retry waits for it", rid)
            self._ack(envelope, header)
            return
        if admission is Admission.CACHED:
            log.debug("request %s was answered lately; sending the stored reply", rid)
            assert stored is not None
            self._ack(envelope, header)
            self._send(waiting, stored)
            return
        if stage is None:
            self._ledger.reject(rid)
            refuse(self._chain.unknown_stage(header.stage), UNKNOWN_STAGE)
            return
        if len(self._ledger) > self._max_in_flight:
            self._ledger.reject(rid)
            refuse(f"overloaded: {len(self._ledger)} requests in flight at {self._name}", OVERLOADED)
            return
        self._ack(envelope, header)
        if reply_to is not None:  # open the link to the entry now: its handshake overlaps the compute
            downstream.connect(reply_to.endpoint, reply_to.curve_server_key)
        job = Job(rid, header.stage, arrays, header.timings, reply_to)  # the header's dict: not copied
        assert self._compute is not None
        # a relay computes nothing: pass it on here rather than queue behind a busy worker
        result = self._compute.run_or_submit(job, inline=stage.relay and not self._local(stage))
        if result is not None:
            self._dispatch(uplink, result)

    def _ack(self, envelope: list[Any], header: TensorHeader) -> None:
        """Tell the stage that forwarded ``header``'s request that this node has it (reply_to only)."""
        if header.reply_to is not None:
            last = self._chain.ends_here(header.stage)
            self._send(envelope, [TensorHeader("ack", header.request_id, header.stage, last=last).to_bytes()])

    def _acked(self, request_id: str, endpoint: str, last: bool, entry: bool) -> None:
        """A later stage took a forwarded request: a middle node forgets it; the entry notes the holder."""
        if not entry:
            self._ledger.hand_on(request_id)
        elif last:
            self._answers.held_by(request_id, endpoint)

    def _lost(self, endpoint: str, reason: str) -> None:
        """A downstream link went down: fail at once what it was to answer (see :mod:`.answers`)."""
        for rid, frames in self._answers.lost(endpoint, reason):
            self._finish(rid, frames, "error")

    def _take_answer(self, header: TensorHeader, tensor_frames: list[Any], over_curve: bool) -> None:
        """An answer from the pipeline's last stage (or a failing one) for a request entered here."""
        refusal = self._answers.admit(header, tensor_frames, over_curve)
        if refusal:
            log.log(logging.DEBUG if "matches no request" in refusal else logging.WARNING,
                    "refusing an answer: %s", refusal)
            return
        frames, kind = caller_frames(header, tensor_frames)
        self._finish(header.request_id, frames, kind)

    def _dispatch(self, uplink: Uplink, result: Result) -> None:
        """Answer the caller, or forward (after the emulated link, if any)."""
        job = result.job
        if result.kind == "forward":
            now = self._clock.monotonic()
            assert self._replies is not None
            reply_to = job.reply_to or self._replies.address(job.request_id, bool(result.curve_server_key))
            forward = Forward(job.request_id, result.source, result.stage, result.endpoint, result.outputs,
                              job.timings, result.key, result.curve_server_key, reply_to=reply_to,
                              entry=job.reply_to is None)
            if forward.entry:
                self._answers.expect(job.request_id, now, key=result.key, curve=bool(result.curve_server_key),
                                     pipeline=f"next stage {result.stage} at {result.endpoint}")
            uplink.forward(forward, now, self._finish)
            return
        frames = pack(result.kind, job.request_id, result.outputs, stage=job.stage,
                      timings=job.timings, error=result.error, code=result.code)
        self._finish(job.request_id, frames, result.kind)

    def _finish(self, request_id: str, frames: list[Any], kind: str) -> None:
        """The one way a request in flight ends: answer every caller waiting on its id."""
        self._answers.forget(request_id)
        if kind == "error":  # counted once per request (an error answer carries no tensors)
            code = unpack(frames)[0].code or "unknown"
            self._errors[code] = self._errors.get(code, 0) + 1
        now = self._clock.monotonic()
        envelopes = self._ledger.finish(request_id, frames, store=kind == "reply", now=now)
        if not envelopes:
            log.debug("answer for %s has no caller waiting (already answered)", request_id)
        for envelope in envelopes:
            self._send(envelope, frames)

    def _answer_all_closing(self) -> int:
        """Answer every request still in flight with ``unreachable`` (the caller may retry elsewhere)."""
        flights = self._ledger.drain()
        assert self._replies is not None
        self._replies.fail_all(flights, f"node {self._name} ({self.endpoint}) is shutting down", UNREACHABLE)
        return len(flights)

    def _send(self, envelope: list[Any], frames: list[Any]) -> None:
        """Send to the caller ``envelope`` names (see :mod:`.replies`); poll thread only."""
        assert self._replies is not None
        self._replies.send(envelope, frames)

    def _local(self, stage: LoadedStage) -> bool:
        """Whether ``stage``'s next stage is served by this node (a route to either endpoint)."""
        return stage.next is not None and bool(stage.next.endpoint) \
            and stage.next.endpoint in (self.endpoint, self.curve_endpoint)

