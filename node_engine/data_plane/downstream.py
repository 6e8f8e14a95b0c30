"""Forwarding to stages on other nodes: one DEALER per downstream endpoint, failing fast.

Threading model: everything here belongs to the data plane's poll thread (zmq sockets are
not thread-safe); no locks. The poll loop registers :meth:`Downstreams.sockets` with its
poller and hands readable ones to :meth:`Downstreams.handle`.

Each forward gets a node-local request id (two callers may pick the same id, and a local
id never collides with another node's or another run's: it carries a random per-instance
prefix) mapped back to the caller's request id. A forward with a ``reply_to`` (see
:mod:`.answers`) is held only until the downstream acknowledges it (``ack``): then it is
forgotten here and ``on_ack`` hears it (the caller's id, the downstream, whether that node
answers it itself, whether this node is the entry): a middle node forgets the request, the
entry notes which node will answer. ``on_down(endpoint, reason)`` hears every link that
goes down, so the entry can fail at once the requests such a node was to answer. A forward
ends either so, or in exactly one call of the ``answer`` callback with the caller's id: an
error made here (unreachable, no ack in time), a downstream's refusal (error instead of
ack), or the reply of a downstream that predates ``reply_to``, relayed (tensors
untouched).

:meth:`Downstreams.send_answer` sends an answer to an entry over the same kind of link
(one DEALER per endpoint, ``ZMQ_IMMEDIATE``, monitored); nothing comes back for it. An
answer that cannot leave (the entry's link is down, or does not connect within
``connect_timeout``) is dropped with a warning: the entry's deadline answers its caller.

Contract, failing fast instead of after ``timeout``:

- DEALERs set ``ZMQ_IMMEDIATE``: a message is only queued to a live connection, so a send
  to a dead downstream fails at once instead of waiting in a queue for a peer that is gone;
- a socket monitor tracks each link's state (``connecting`` -> ``up`` on a completed
  handshake; ``down`` on a refused connect, a lost connection or a failed handshake). A
  link going down answers every forward waiting on it with an ``unreachable`` error at
  once; a forward to a link that is down is refused at once;
- a forward to a link still connecting (a first forward, or a downstream restarting)
  waits up to ``connect_timeout`` for the handshake, then fails;
- ZMTP heartbeats (``heartbeat_s``) turn a peer that vanished without closing its
  connection (power loss, cable) into a lost connection within ``3 * heartbeat_s``;
- a downstream that is connected but does not answer (or, with ``reply_to``, acknowledge)
  within ``timeout`` (a hung peer) gets a ``downstream_timeout`` error.

Every error text names the downstream endpoint and stage.

Passive link figures: each forward remembers when it left, its payload bytes and its
emulated uplink wait. When its ack comes back, the time the link took is the ack's round
trip plus that wait (the ack leaves the downstream's poll thread before any compute); for a
relayed reply (an older downstream) it is the round trip plus that wait less the time the
later stages report in the reply's ``timings``: ``on_transfer(endpoint, payload bytes, ms)``
hears it (see :mod:`node_engine.links`). A busy downstream poll thread makes the link look
slower, never faster.

Security: a forward is signed with its ``key`` (the deployment's data key) when it has
one. A forward with a ``curve_server_key`` goes over a CURVE-encrypted link (one DEALER per
endpoint and server key; this node's client keypair is made per instance: the server
authenticates senders by the request's authenticator, not by their CURVE key). A server
whose key does not match fails the handshake, which marks the link down like a refused
connection.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import zmq
from zmq.utils.monitor import recv_monitor_message

from node_engine.data_plane.forwarding import Forward, link_timing_key
from node_engine.data_plane.sockets import readable, tune_buffers
from treeline_common.tensor_wire import (
    DOWNSTREAM_TIMEOUT,
    UNREACHABLE,
    FramingError,
    TensorHeader,
    pack,
    payload_bytes,
)

log = logging.getLogger(__name__)

# answer(caller's request id, frames for the caller, kind: "reply" | "error")
Answer = Callable[[str, list[Any], str], None]
# on_transfer(downstream endpoint, payload bytes, link ms): one passive sample per answered forward
TransferObserver = Callable[[str, int, float], None]
# on_ack(caller's request id, downstream endpoint, it answers itself, this node is the entry)
AckObserver = Callable[[str, str, bool, bool], None]
# on_down(downstream endpoint, reason): a link went down
DownObserver = Callable[[str, str], None]

_MONITORED = (zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED | zmq.EVENT_CONNECT_RETRIED
              | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
              | zmq.EVENT_HANDSHAKE_FAILED_AUTH)
_DOWN_REASONS: dict[int, str] = {
    zmq.EVENT_DISCONNECTED: "connection lost",
    zmq.EVENT_CONNECT_RETRIED: "connection refused",
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL: "handshake failed",
    zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: "handshake failed (protocol)",
    zmq.EVENT_HANDSHAKE_FAILED_AUTH: "handshake failed (auth)",
}
BACKLOG_POLL_MS = 20  # poll cadence while forwards wait for a connection
RECONNECT_MAX_MS = 1000  # zmq reconnects to a lost downstream every 100 ms, backing off to this


@dataclass
class _Pending:
    request_id: str  # the caller's id
    endpoint: str
    stage: str
    deadline: float
    sent_at: float = 0.0  # monotonic s
    payload: int = 0  # tensor bytes sent
    link_wait_ms: float = 0.0  # emulated uplink wait before it left
    known: frozenset[str] = frozenset()  # timing keys it carried (the rest come from later stages)
    reply_to: bool = False  # the downstream acks it (its answer goes to the entry)
    entry: bool = True  # this node holds the caller


@dataclass
class _Waiting:
    """A forward (or an answer: ``forward`` None) not yet sent: its link is connecting (or full)."""

    local_id: str
    forward: Forward | None
    frames: list[Any]
    give_up_at: float


@dataclass
class _Link:
    endpoint: str
    curve_server_key: str
    dealer: zmq.Socket[Any]
    monitor: zmq.Socket[Any]
    state: str = "connecting"  # connecting | up | down
    reason: str = ""
    backlog: list[_Waiting] = field(default_factory=list)


class Downstreams:
    """Downstream links (one DEALER + monitor per endpoint) and the forwards awaiting answers."""

    def __init__(self, ctx: zmq.Context[Any], poller: zmq.Poller, *, name: str, timeout: float,
                 connect_timeout: float = 1.0, heartbeat_s: float = 1.0,
                 on_transfer: TransferObserver | None = None, on_ack: AckObserver | None = None,
                 on_down: DownObserver | None = None) -> None:
        self._ctx = ctx
        self._on_transfer = on_transfer
        self._on_ack = on_ack
        self._on_down = on_down
        self._poller = poller
        self._name = name
        self._timeout = timeout
        self._connect_timeout = connect_timeout
        self._heartbeat_ms = int(heartbeat_s * 1000)
        self._links: dict[tuple[str, str], _Link] = {}  # (endpoint, CURVE server key or "")
        self._by_socket: dict[zmq.Socket[Any], _Link] = {}
        self._pending: dict[str, _Pending] = {}
        self._prefix = f"{name}-{uuid.uuid4().hex[:8]}"
        self._seq = 0
        self._curve_public, self._curve_secret = zmq.curve_keypair()

    def sockets(self) -> list[zmq.Socket[Any]]:
        """Every socket the poll loop must watch for input (dealers and their monitors)."""
        return list(self._by_socket)

    def pending(self) -> int:
        """Forwards sent and not yet acknowledged or answered (the per-request state held here)."""
        return len(self._pending)

    def poll_timeout_ms(self, cap_ms: int) -> int:
        """Poll sooner while forwards wait for a connection or a free queue."""
        waiting = any(link.backlog for link in self._links.values())
        return min(cap_ms, BACKLOG_POLL_MS) if waiting else cap_ms

    def connect(self, endpoint: str, curve_server_key: str = "") -> str:
        """Open the link to ``endpoint`` if not yet open; its state: ``connecting`` | ``up`` | ``down``.

        Opening early (e.g. while a forward waits out the emulated uplink) lets the
        handshake overlap the wait.
        """
        return self._link(endpoint, curve_server_key).state

    def send(self, forward: Forward, now: float, answer: Answer) -> None:
        """Send downstream, or hold it while its link connects, or answer with an error at once."""
        link = self._link(forward.endpoint, forward.curve_server_key)
        if link.state == "down":
            self._fail(forward.request_id, forward.endpoint, forward.stage, link.reason, answer)
            return
        self._seq += 1
        local_id = f"{self._prefix}-{self._seq}"
        frames = pack("request", local_id, forward.outputs, stage=forward.stage, timings=forward.timings,
                      key=forward.key, reply_to=forward.reply_to)
        self._queue(link, _Waiting(local_id, forward, frames, now + self._connect_timeout), now)

    def send_answer(self, endpoint: str, curve_server_key: str, frames: list[Any], now: float) -> None:
        """Send an answer to an entry (see :mod:`.answers`); dropped with a warning if it cannot leave."""
        link = self._link(endpoint, curve_server_key)
        if link.state == "down":
            log.warning("answer to %s dropped: %s (its entry's deadline answers the caller)", endpoint,
                        link.reason)
            return
        self._queue(link, _Waiting("", None, frames, now + self._connect_timeout), now)

    def _queue(self, link: _Link, waiting: _Waiting, now: float) -> None:
        if link.backlog or not self._try_send(link, waiting, now):
            link.backlog.append(waiting)  # keep order behind earlier waiting messages

    def handle(self, sock: zmq.Socket[Any], now: float, answer: Answer) -> None:
        """Process what is readable on ``sock`` (one of :meth:`sockets`)."""
        link = self._by_socket.get(sock)
        if link is None:
            return
        if sock is link.monitor:
            self._on_monitor(link, now, answer)
        else:
            self._relay_back(link.dealer, now, answer)

    def tick(self, now: float, answer: Answer) -> None:
        """Retry waiting forwards, give up on those past their wait, expire unanswered ones."""
        for link in self._links.values():
            if link.backlog:
                self._flush(link, now, answer)
        expired = [key for key, entry in self._pending.items() if entry.deadline <= now]
        for key in expired:
            entry = self._pending.pop(key)
            message = (f"downstream {entry.endpoint} (stage {entry.stage}) did not answer within "
                       f"{self._timeout:.1f}s")
            frames = pack("error", entry.request_id, {}, error=message, code=DOWNSTREAM_TIMEOUT)
            answer(entry.request_id, frames, "error")

    def close(self, linger_ms: int = 0) -> None:
        """Close every link; ``linger_ms`` lets messages already sent (last answers) leave."""
        for link in self._links.values():
            with contextlib.suppress(zmq.ZMQError):
                link.dealer.disable_monitor()
            link.monitor.close(0)
            link.dealer.close(linger_ms)
        self._links.clear()
        self._by_socket.clear()
        self._pending.clear()

    # ------------------------------------------------------------------ internals

    def _link(self, endpoint: str, curve_server_key: str) -> _Link:
        return self._links.get((endpoint, curve_server_key)) or self._open(endpoint, curve_server_key)

    def _open(self, endpoint: str, curve_server_key: str = "") -> _Link:
        dealer = self._ctx.socket(zmq.DEALER)
        dealer.setsockopt(zmq.LINGER, 0)
        tune_buffers(dealer)
        if curve_server_key:
            dealer.curve_serverkey = curve_server_key.encode()
            dealer.curve_publickey = self._curve_public
            dealer.curve_secretkey = self._curve_secret
        dealer.setsockopt(zmq.IMMEDIATE, 1)
        dealer.setsockopt(zmq.HEARTBEAT_IVL, self._heartbeat_ms)
        dealer.setsockopt(zmq.HEARTBEAT_TIMEOUT, 3 * self._heartbeat_ms)
        dealer.setsockopt(zmq.RECONNECT_IVL_MAX, RECONNECT_MAX_MS)  # a long-dead peer: retry ~1/s
        monitor = dealer.get_monitor_socket(_MONITORED)  # before connect: see the first events too
        dealer.connect(endpoint)
        link = _Link(endpoint, curve_server_key, dealer, monitor)
        self._links[(endpoint, curve_server_key)] = link
        self._by_socket[dealer] = link
        self._by_socket[monitor] = link
        self._poller.register(dealer, zmq.POLLIN)
        self._poller.register(monitor, zmq.POLLIN)
        return link

    def _try_send(self, link: _Link, waiting: _Waiting, now: float) -> bool:
        forward = waiting.forward
        if forward is not None:  # recorded before it leaves: its ack may be read before send returns
            self._pending[waiting.local_id] = _Pending(
                forward.request_id, forward.endpoint, forward.stage, now + self._timeout, now,
                payload_bytes(forward.outputs), forward.timings.get(link_timing_key(forward.source), 0.0),
                frozenset(forward.timings), reply_to=forward.reply_to is not None, entry=forward.entry)
        try:
            link.dealer.send_multipart(waiting.frames, copy=False, flags=zmq.NOBLOCK)
        except zmq.Again:  # no live connection yet, or the downstream's queue is full
            self._pending.pop(waiting.local_id, None)
            return False
        return True

    def _flush(self, link: _Link, now: float, answer: Answer) -> None:
        while link.backlog:
            waiting = link.backlog[0]
            if link.state != "down" and self._try_send(link, waiting, now):
                link.backlog.pop(0)
                continue
            if link.state == "down":
                reason = link.reason
            elif now >= waiting.give_up_at:
                reason = ("not accepting requests (queue full)" if link.state == "up"
                          else f"no connection within {self._connect_timeout:.1f}s")
            else:
                return
            link.backlog.pop(0)
            forward = waiting.forward
            if forward is None:
                log.warning("answer to %s dropped: %s (its entry's deadline answers the caller)",
                            link.endpoint, reason)
            else:
                self._fail(forward.request_id, link.endpoint, forward.stage, reason, answer)

    def _on_monitor(self, link: _Link, now: float, answer: Answer) -> None:
        while readable(link.monitor):
            try:
                event = recv_monitor_message(link.monitor, zmq.NOBLOCK)
            except zmq.ZMQError:
                return
            kind = int(event["event"])
            if kind == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                if link.state != "up":
                    log.info("downstream %s is up", link.endpoint)
                link.state, link.reason = "up", ""
            elif kind in _DOWN_REASONS:
                if link.state == "down" and kind == zmq.EVENT_CONNECT_RETRIED:
                    continue  # still down; zmq keeps retrying in the background
                self._down(link, _DOWN_REASONS[kind], answer)
        if link.backlog:
            self._flush(link, now, answer)

    def _down(self, link: _Link, reason: str, answer: Answer) -> None:
        """The link is down: every forward waiting on it gets an ``unreachable`` error now."""
        if link.state != "down":
            log.warning("downstream %s is unreachable: %s", link.endpoint, reason)
        link.state, link.reason = "down", reason
        lost = [key for key, entry in self._pending.items() if entry.endpoint == link.endpoint]
        for key in lost:
            entry = self._pending.pop(key)
            self._fail(entry.request_id, entry.endpoint, entry.stage, reason, answer)
        if self._on_down is not None:
            self._on_down(link.endpoint, reason)
        # the backlog is failed by the caller's _flush (the link is down now)

    def _fail(self, request_id: str, endpoint: str, stage: str, reason: str, answer: Answer) -> None:
        message = f"downstream {endpoint} (stage {stage}) unreachable from {self._name}: {reason}"
        answer(request_id, pack("error", request_id, {}, error=message, code=UNREACHABLE), "error")

    def _relay_back(self, dealer: zmq.Socket[Any], now: float, answer: Answer) -> None:
        """Take the downstream's acks; relay its replies/errors to the original caller, tensors untouched."""
        while readable(dealer):
            frames = dealer.recv_multipart(copy=False)
            try:
                header = TensorHeader.from_bytes(frames[0].buffer)
            except FramingError as exc:
                log.warning("dropping malformed downstream message: %s", exc)
                continue
            if header.kind not in ("ack", "reply", "error"):
                log.warning("dropping a downstream %r message: not an answer to a forward", header.kind)
                continue
            entry = self._pending.pop(header.request_id, None)
            if entry is None:
                log.debug("late downstream reply %s dropped", header.request_id)
                continue
            if header.kind == "ack":  # the next stage has it; its answer goes straight to the entry
                self._report(entry, (now - entry.sent_at) * 1000.0 + entry.link_wait_ms)
                if entry.reply_to and self._on_ack is not None:
                    self._on_ack(entry.request_id, entry.endpoint, header.last, entry.entry)
                continue
            if header.kind == "reply":
                self._observe(entry, header, now)
            header.request_id = entry.request_id
            answer(entry.request_id, [header.to_bytes(), *frames[1:]], header.kind)

    def _observe(self, entry: _Pending, header: TensorHeader, now: float) -> None:
        """Hand one passive link sample to ``on_transfer`` (never lets it break the poll loop)."""
        if self._on_transfer is None:
            return
        later = sum(float(ms) for key, ms in header.timings.items()
                    if key not in entry.known and isinstance(ms, int | float))
        self._report(entry, (now - entry.sent_at) * 1000.0 + entry.link_wait_ms - later)

    def _report(self, entry: _Pending, link_ms: float) -> None:
        if self._on_transfer is None or link_ms <= 0.0:
            return
        try:
            self._on_transfer(entry.endpoint, entry.payload, link_ms)
        except Exception:
            log.exception("passive link observer failed")
