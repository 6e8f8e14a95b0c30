"""Which requests a node has in flight, who waits for each, and what it answered lately.

A caller that gets no answer in time retries with the SAME request id (see
:class:`~node_engine.data_plane.service_client.ServiceClient`). The node must then not
compute the request twice:

- an id already **in flight** here is not admitted again: the retry's routing envelope is
  attached to the running request and gets the same answer when it finishes (a retry over
  the same connection, same envelope, is not attached twice: it gets the one answer);
- an id **answered** in the last ``ttl`` seconds gets the stored reply instead of a new
  computation. Only ``reply`` answers are stored: an error (unreachable downstream,
  overload) is worth computing again on retry.

A request forwarded from another stage with a ``reply_to`` is admitted with
``storable=False``: its "caller" is the entry node, which keeps the reply for retries
itself, and the node-local id it came with is never asked for again. Once such a request is
handed on to a later stage (the later stage acknowledged it), :meth:`Ledger.hand_on`
forgets it: no state is kept here for its answer.

Request ids are random uuid4 hex strings chosen by callers, so the id alone is the key;
two callers picking the same id is not a case worth guarding.

The store is bounded three ways: ``max_entries`` replies, ``max_bytes`` of reply frames
and ``ttl`` seconds; the oldest answers leave first (answer order, not last-read order:
the promise is "answered in the last ``ttl`` seconds", so a read does not extend it).

Threading model: owned by the data plane's poll thread; no locks. Time is passed in.
"""

from __future__ import annotations

import enum
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

Envelope = list[Any]
Frames = list[Any]


class Admission(enum.Enum):
    NEW = "new"  # compute it
    ATTACHED = "attached"  # already in flight here: the answer will reach this caller too
    CACHED = "cached"  # answered lately: send the stored reply


@dataclass
class _Flight:
    envelopes: list[Envelope]
    storable: bool = True  # keep the reply for retries of the id (False: reply_to requests)
    started: float = 0.0  # monotonic s of admission
    timer: Callable[[float], None] | None = None  # told the ms from admission to a reply


@dataclass
class _Answered:
    at: float
    frames: Frames
    nbytes: int


@dataclass
class Ledger:
    """In-flight requests by id and a bounded store of recent replies (see the module docstring)."""

    max_entries: int = 1024
    ttl: float = 30.0
    max_bytes: int = 64 * 1024 * 1024
    _flights: dict[str, _Flight] = field(default_factory=dict)
    _answered: OrderedDict[str, _Answered] = field(default_factory=OrderedDict)
    _bytes: int = 0

    def __len__(self) -> int:
        """Requests in flight."""
        return len(self._flights)

    def stored(self) -> int:
        """Replies held for retries."""
        return len(self._answered)

    def admit(self, request_id: str, envelope: Envelope, now: float, storable: bool = True,
              timer: Callable[[float], None] | None = None) -> tuple[Admission, Frames | None]:
        """Classify an arriving request; NEW requests are recorded as in flight.

        Returns ``(admission, stored reply frames or None)``. The caller checks its own
        in-flight bound only for NEW (a duplicate costs nothing) and calls :meth:`reject`
        if it then refuses the request. With ``storable=False`` its reply is not kept.
        ``timer`` (NEW only) is called by :meth:`finish` with the ms from ``now`` to a reply.
        """
        flight = self._flights.get(request_id)
        if flight is not None:
            if not any(_same(envelope, known) for known in flight.envelopes):
                flight.envelopes.append(envelope)
            return Admission.ATTACHED, None
        self._expire(now)
        answered = self._answered.get(request_id)
        if answered is not None:
            return Admission.CACHED, answered.frames
        self._flights[request_id] = _Flight([envelope], storable, now, timer)
        return Admission.NEW, None

    def reject(self, request_id: str) -> None:
        """Forget a request just admitted as NEW that the node refuses (e.g. overloaded)."""
        self._flights.pop(request_id, None)

    def hand_on(self, request_id: str) -> None:
        """Forget a request a later stage took over (its answer goes to the entry, not through here).

        Idempotent; a later :meth:`finish` of the id returns ``[]``.
        """
        self._flights.pop(request_id, None)

    def finish(self, request_id: str, frames: Frames, *, store: bool, now: float) -> list[Envelope]:
        """End a request; return the envelopes of every caller waiting for it ([] if unknown).

        With ``store`` the reply frames are kept for retries of the same id. They are
        sent again as they are, so they must not be mutated afterwards.
        """
        flight = self._flights.pop(request_id, None)
        if flight is None:
            return []
        if store and flight.storable:
            self._store(request_id, frames, now)
        if store and flight.timer is not None:
            flight.timer((now - flight.started) * 1000.0)
        return flight.envelopes

    def drain(self) -> dict[str, list[Envelope]]:
        """Every in-flight request's waiting envelopes, forgetting them (shutdown)."""
        flights = {rid: flight.envelopes for rid, flight in self._flights.items()}
        self._flights.clear()
        return flights

    # ------------------------------------------------------------------ internals

    def _store(self, request_id: str, frames: Frames, now: float) -> None:
        nbytes = frames_nbytes(frames)
        if nbytes > self.max_bytes or self.max_entries <= 0:
            return
        previous = self._answered.pop(request_id, None)
        if previous is not None:
            self._bytes -= previous.nbytes
        self._answered[request_id] = _Answered(now, frames, nbytes)
        self._bytes += nbytes
        while len(self._answered) > self.max_entries or self._bytes > self.max_bytes:
            self._drop_oldest()
        self._expire(now)

    def _expire(self, now: float) -> None:
        while self._answered:
            oldest = next(iter(self._answered.values()))
            if now - oldest.at < self.ttl:
                return
            self._drop_oldest()

    def _drop_oldest(self) -> None:
        _, answered = self._answered.popitem(last=False)
        self._bytes -= answered.nbytes


def frames_nbytes(frames: Frames) -> int:
    """Bytes held by message frames (``bytes``, numpy arrays or ``zmq.Frame``)."""
    total = 0
    for frame in frames:
        nbytes = getattr(frame, "nbytes", None)  # numpy array
        total += int(nbytes) if nbytes is not None else len(frame)
    return total


def _same(a: Envelope, b: Envelope) -> bool:
    return len(a) == len(b) and all(_raw(x) == _raw(y) for x, y in zip(a, b, strict=True))


def _raw(frame: Any) -> Any:
    """A frame's bytes; anything else (a reply address the envelope holds) compares as itself."""
    if isinstance(frame, bytes | bytearray | memoryview) or hasattr(frame, "bytes"):
        return bytes(getattr(frame, "bytes", frame))
    return frame
