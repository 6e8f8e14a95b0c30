"""A node's way out: forwards leave at once, or after waiting out the emulated uplink.

:class:`Uplink` sits in front of :class:`~.downstream.Downstreams`. A native node has no
emulated link (``link_delay_ms`` is 0) and its forwards go out at once. An emulated node's
forward waits in a :class:`~.forwarding.LinkQueue` until its transfer time is over (the
link is opened meanwhile, so the handshake overlaps the wait); the wait is recorded in the
request's timings as ``"<stage_key>->link"``. A forward to a link known to be down is not
delayed: it fails at once (fail fast).

Threading model: owned by the data plane's poll thread; no locks.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from node_engine.data_plane.downstream import Answer, Downstreams
from node_engine.data_plane.forwarding import Forward, LinkQueue, link_timing_key
from treeline_common.tensor_wire import payload_bytes

log = logging.getLogger(__name__)


@dataclass
class _Delayed:
    """A forward waiting out the emulated uplink, and when it started waiting."""

    forward: Forward
    queued_at: float


class Uplink:
    """Sends forwards through ``downstream`` after ``link_delay_ms(payload bytes)`` (see the module)."""

    def __init__(self, downstream: Downstreams, link_delay_ms: Callable[[int], float]) -> None:
        self._downstream = downstream
        self._link_delay_ms = link_delay_ms
        self._queue: LinkQueue[_Delayed] = LinkQueue()

    def __len__(self) -> int:
        """Forwards waiting on the emulated link."""
        return len(self._queue)

    def poll_timeout_ms(self, now: float, cap_ms: int) -> int:
        """How long the poll loop may block before a forward falls due (at most ``cap_ms``)."""
        return self._queue.poll_timeout_ms(now, cap_ms)

    def forward(self, forward: Forward, now: float, answer: Answer) -> None:
        """Send now, or queue until the emulated transfer is over."""
        delay_ms = self._link_delay_ms(payload_bytes(forward.outputs))
        if delay_ms > 0.0 and self._downstream.connect(forward.endpoint, forward.curve_server_key) != "down":
            self._queue.push(now + delay_ms / 1000.0, _Delayed(forward, now))
        else:
            self._downstream.send(forward, now, answer)  # a down link fails it at once

    def send_due(self, now: float, answer: Answer) -> None:
        """Send the forwards whose emulated transfer is over."""
        for delayed in self._queue.pop_due(now):
            forward = delayed.forward
            forward.timings[link_timing_key(forward.source)] = (now - delayed.queued_at) * 1000.0
            self._downstream.send(forward, now, answer)

    def drop(self) -> None:
        """Forget every forward still waiting (shutdown)."""
        if self._queue:
            log.info("dropping %d forward(s) still waiting on the emulated link", len(self._queue))
        self._queue.clear()
