"""Forwarding to stages on other nodes: the emulated-uplink queue and the downstream sockets.

Both classes belong to the data plane's poll thread (zmq sockets are not thread-safe, and
the queue is only touched there), so neither takes a lock.

:class:`LinkQueue` is how an emulated node waits out its uplink without holding anything
up: a forward due to leave at ``now + link_delay`` sits in a heap, the poll loop shortens
its poll timeout to the earliest due time and sends what is due. The compute workers are
never involved, so while one request's tensors are "on the wire" the next request is
already computing, as on a real device whose NIC and CPU work in parallel. Native nodes
have no emulated link and their forwards go out at once.

Only the forward path is charged: replies relayed back to the caller travel unchanged
and undelayed. The link model (docs/contracts.md, "Scheduler v2 additions") costs the
tensors a stage sends to the next one; answers are small (class scores), so leaving them
out keeps the emulation and the planner's cost model the same thing.

:class:`Forwarder` keeps one DEALER per downstream endpoint and the requests waiting for a
downstream answer. Each forward gets a node-local request id (two callers may pick the
same id) mapped back to the caller's routing envelope and id; a downstream that does not
answer within ``timeout`` yields an ``error`` reply.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import numpy as np
import zmq

from treeline_common.tensor_wire import FramingError, TensorHeader, pack

log = logging.getLogger(__name__)

T = TypeVar("T")
SendToCaller = Callable[[list[Any], list[Any]], None]


def link_timing_key(stage_key: str) -> str:
    """Header ``timings`` key of the emulated transfer after ``stage_key``: ``"<stage_key>->link"``.

    Kept apart from the stage's compute key so callers see transfer and compute time separately.
    """
    return f"{stage_key}->link"


@dataclass
class Forward:
    """One request's tensors bound for ``stage`` on another node (``endpoint``)."""

    envelope: list[Any]  # the original caller's routing envelope
    request_id: str  # the original caller's request id
    source: str  # the last stage run here, whose outputs these are
    stage: str  # the downstream stage key
    endpoint: str
    outputs: dict[str, np.ndarray]
    timings: dict[str, float]


@dataclass(order=True)
class _Due(Generic[T]):
    due: float
    seq: int
    item: T = field(compare=False)


class LinkQueue(Generic[T]):
    """Items waiting until a monotonic due time (the emulated uplink transfer)."""

    def __init__(self) -> None:
        self._heap: list[_Due[T]] = []
        self._seq = itertools.count()

    def __len__(self) -> int:
        return len(self._heap)

    def push(self, due: float, item: T) -> None:
        heapq.heappush(self._heap, _Due(due, next(self._seq), item))

    def poll_timeout_ms(self, now: float, cap_ms: int) -> int:
        """How long the poll loop may block: up to ``cap_ms``, less when something falls due sooner."""
        if not self._heap:
            return cap_ms
        until_ms = (self._heap[0].due - now) * 1000.0
        return max(0, min(cap_ms, math.ceil(until_ms)))

    def pop_due(self, now: float) -> list[T]:
        """Every item due at ``now``, earliest first (ties in push order)."""
        due: list[T] = []
        while self._heap and self._heap[0].due <= now:
            due.append(heapq.heappop(self._heap).item)
        return due

    def clear(self) -> list[T]:
        items = [entry.item for entry in sorted(self._heap)]
        self._heap.clear()
        return items


@dataclass
class _Pending:
    envelope: list[Any]
    request_id: str
    endpoint: str
    deadline: float


class Forwarder:
    """Downstream DEALERs (one per endpoint, registered with the poll loop's poller)."""

    def __init__(self, ctx: zmq.Context[Any], poller: zmq.Poller, *, name: str, timeout: float) -> None:
        self._ctx = ctx
        self._poller = poller
        self._name = name
        self._timeout = timeout
        self._dealers: dict[str, zmq.Socket[Any]] = {}
        self._pending: dict[str, _Pending] = {}
        self._ids = itertools.count(1)

    def sockets(self) -> list[zmq.Socket[Any]]:
        return list(self._dealers.values())

    def send(self, forward: Forward, now: float) -> bool:
        """Send downstream; False if the downstream's queue is full (the caller gets an error)."""
        dealer = self._dealers.get(forward.endpoint)
        if dealer is None:
            dealer = self._ctx.socket(zmq.DEALER)
            dealer.setsockopt(zmq.LINGER, 0)
            dealer.connect(forward.endpoint)
            self._dealers[forward.endpoint] = dealer
            self._poller.register(dealer, zmq.POLLIN)
        local_id = f"{self._name}-{next(self._ids)}"
        frames = pack("request", local_id, forward.outputs, stage=forward.stage, timings=forward.timings)
        try:
            dealer.send_multipart(frames, copy=False, flags=zmq.NOBLOCK)
        except zmq.Again:
            return False
        self._pending[local_id] = _Pending(forward.envelope, forward.request_id, forward.endpoint,
                                           now + self._timeout)
        return True

    def relay_back(self, dealer: zmq.Socket[Any], send_to_caller: SendToCaller) -> int:
        """Relay one downstream reply/error to its original caller, tensors untouched (and undelayed).

        Returns 1 if a request left flight, else 0.
        """
        frames = dealer.recv_multipart(copy=False)
        try:
            header = TensorHeader.from_bytes(frames[0].buffer)
        except FramingError as exc:
            log.warning("dropping malformed downstream message: %s", exc)
            return 0
        entry = self._pending.pop(header.request_id, None)
        if entry is None:
            log.debug("late downstream reply %s dropped", header.request_id)
            return 0
        header.request_id = entry.request_id
        send_to_caller(entry.envelope, [header.to_bytes(), *frames[1:]])
        return 1

    def expire(self, now: float, send_to_caller: SendToCaller) -> int:
        """Answer with an error every forward whose downstream missed its deadline; return how many."""
        if not self._pending:
            return 0
        expired = [key for key, entry in self._pending.items() if entry.deadline <= now]
        for key in expired:
            entry = self._pending.pop(key)
            message = f"downstream {entry.endpoint} did not answer within {self._timeout:.1f}s"
            send_to_caller(entry.envelope, pack("error", entry.request_id, {}, error=message))
        return len(expired)

    def close(self) -> None:
        for dealer in self._dealers.values():
            dealer.close(0)
        self._dealers.clear()
        self._pending.clear()
