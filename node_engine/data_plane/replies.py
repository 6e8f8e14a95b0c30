"""Where a reply goes: the routing envelope kept for each caller, and the one way to send to it.

An **envelope** is what the request ledger (:mod:`.ledger`) keeps for every caller waiting
on a request. Its first frame says how to reach that caller:

- :data:`PLAIN` or :data:`CURVE`: the caller is connected to this node's plain or CURVE
  ROUTER; the rest of the envelope is its ROUTER identity (and a REQ caller's empty
  delimiter), and the reply goes back on the socket the request came in on;
- :data:`ANSWER`: the caller is an entry node elsewhere (``[ANSWER, ReplyTo, data key]``);
  the reply goes there as an ``answer`` signed with that key, over a downstream link
  (:mod:`.answers`, :meth:`~.downstream.Downstreams.send_answer`).

A request this node forwards as its entry names where its answer must come back:
:meth:`Replies.address`, this node's socket of the same kind as the forward's link.

A reply that cannot be delivered (the caller is gone, its queue is full) is logged and
dropped: the caller's own timeout (or, for an answer, the entry's deadline) covers it.

Threading model: a :class:`Replies` belongs to the data plane's poll thread (it sends on
the poll thread's sockets); no locks.
"""

from __future__ import annotations

import logging
from typing import Any

import zmq

from node_engine.data_plane.answers import answer_frames
from node_engine.data_plane.downstream import Downstreams
from treeline_common.clock import Clock
from treeline_common.tensor_wire import ReplyTo, pack

log = logging.getLogger(__name__)

PLAIN, CURVE, ANSWER = b"p", b"c", b"a"
Envelope = list[Any]
Frames = list[Any]


def split_envelope(frames: Frames, over_curve: bool) -> tuple[Envelope, Frames]:
    """ROUTER frames -> (the caller's envelope, the message). A REQ caller adds an empty delimiter."""
    cut = 2 if len(frames) > 2 and len(frames[1].buffer) == 0 else 1
    return [CURVE if over_curve else PLAIN, *frames[:cut]], frames[cut:]


def answer_envelope(reply_to: ReplyTo, key: bytes) -> Envelope:
    """A forwarded request's caller: its entry, reached at ``reply_to``, answers signed with ``key``."""
    return [ANSWER, reply_to, key]


class Replies:
    """Sends to the caller an envelope names (see the module docstring)."""

    def __init__(self, router: zmq.Socket[Any], curve_router: zmq.Socket[Any] | None,
                 downstream: Downstreams, clock: Clock, *, endpoint: str, curve_endpoint: str = "",
                 curve_public_key: str = "") -> None:
        self._router = router
        self._curve_router = curve_router
        self._downstream = downstream
        self._clock = clock
        self._endpoint = endpoint
        self._curve_endpoint = curve_endpoint
        self._curve_public_key = curve_public_key

    def address(self, request_id: str, curve: bool) -> ReplyTo:
        """Where the answer to ``request_id`` (entered here) must come: the CURVE socket for a
        ``curve`` forward when this node has one, else the plain one."""
        if curve and self._curve_endpoint:
            return ReplyTo(self._curve_endpoint, request_id, self._curve_public_key)
        return ReplyTo(self._endpoint, request_id)

    def fail_all(self, flights: dict[str, list[Envelope]], message: str, code: str) -> None:
        """Answer every caller of every request in ``flights`` with one error (``code``)."""
        for rid, envelopes in flights.items():
            frames = pack("error", rid, {}, error=message, code=code)
            for envelope in envelopes:
                self.send(envelope, frames)

    def send(self, envelope: Envelope, frames: Frames) -> None:
        """Send ``frames`` (a reply or error) to the caller ``envelope`` names; a gone caller is logged."""
        if envelope[0] == ANSWER:
            reply_to, key = envelope[1], envelope[2]
            self._downstream.send_answer(reply_to.endpoint, reply_to.curve_server_key,
                                         answer_frames(frames, reply_to, key), self._clock.monotonic())
            return
        router = self._curve_router if envelope[0] == CURVE else self._router
        assert router is not None
        try:
            router.send_multipart([*envelope[1:], *frames], copy=False, flags=zmq.NOBLOCK)
        except zmq.ZMQError as exc:  # caller gone (EHOSTUNREACH) or its queue full
            log.warning("could not reply to a caller: %s", exc)
