"""Forwarding to stages on other nodes: what a forward is, and the emulated-uplink queue.

:class:`LinkQueue` belongs to the data plane's poll thread (only touched there), so it
takes no lock. The downstream sockets are in :mod:`.downstream`.

:class:`LinkQueue` is how an emulated node waits out its uplink without holding anything
up: a forward due to leave at ``now + link_delay`` sits in a heap, the poll loop shortens
its poll timeout to the earliest due time and sends what is due. The compute workers are
never involved, so while one request's tensors are "on the wire" the next request is
already computing, as on a real device whose NIC and CPU work in parallel. Native nodes
have no emulated link and their forwards go out at once.

Only the forward path is charged: answers sent straight back to the entry (and replies
relayed back by an older downstream) travel unchanged and undelayed. The link model
(docs/contracts.md, "Scheduler v2 additions") costs the tensors a stage sends to the next
one; answers are small (class scores), so leaving them out keeps the emulation and the
planner's cost model the same thing.
"""

from __future__ import annotations

import heapq
import itertools
import math
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import numpy as np

from treeline_common.tensor_wire import ReplyTo

T = TypeVar("T")


def link_timing_key(stage_key: str) -> str:
    """Header ``timings`` key of the emulated transfer after ``stage_key``: ``"<stage_key>->link"``.

    Kept apart from the stage's compute key so callers see transfer and compute time separately.
    """
    return f"{stage_key}->link"


@dataclass
class Forward:
    """One request's tensors bound for ``stage`` on another node (``endpoint``)."""

    request_id: str  # the original caller's request id
    source: str  # the last stage run here, whose outputs these are
    stage: str  # the downstream stage key
    endpoint: str
    outputs: dict[str, np.ndarray]
    timings: dict[str, float]
    key: bytes = b""  # sign the request with this data key (b"": unsigned)
    curve_server_key: str = ""  # the downstream's CURVE public key: ``endpoint`` is its CURVE socket
    reply_to: ReplyTo | None = None  # where the answer goes (None: relayed back hop by hop)
    entry: bool = True  # this node holds the caller; False: a middle node, which forgets it on the ack


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
