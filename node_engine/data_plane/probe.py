"""Link probes on the data plane: a tiny ping for RTT and a burst for throughput.

A probe is an ordinary ``request`` message addressed to the reserved stage
:data:`PROBE_STAGE`; its one tensor is padding (``uint8``, :data:`PING_BYTES` for a ping,
:data:`BURST_BYTES` for a burst). Every data plane server answers it at once from its poll
thread with an empty ``reply`` (no tensors, no compute, no ledger entry, no authentication:
it reveals nothing and costs the receiver one small frame), so the round trip measures the
sender's uplink towards that peer, the direction the planner's link model charges
(docs/contracts.md, "Scheduler v2 additions").

Emulation: an emulated sender charges its declared uplink on a probe exactly as on a
forwarded tensor (``delay_ms(payload bytes)``, the same function the data plane's link
queue uses) before the probe leaves, so what a probe measures and what the emulation
charges are the same thing. Native senders never wait.

Estimates (pure, :func:`estimate`): ``rtt_ms`` is the fastest of the pings and the burst's
transfer time the fastest burst round trip minus that RTT (floors of the path: queueing and a
busy host only ever add, so a node probing while it loads a partition does not read a slower
link; the median read 40 Mbit/s on a 50 Mbit/s emulated link then); ``mbps = burst bytes /
transfer ms / 125`` (1 Mbit/s = 125 bytes per ms).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import zmq

from node_engine.data_plane.client import set_curve_client
from treeline_common.clock import Clock
from treeline_common.tensor_wire import TensorHeader, pack, unpack

log = logging.getLogger(__name__)

PROBE_STAGE = "_probe"  # reserved stage key: never a deployment's (those read "<deployment>/<stage>/<gen>")
PING_BYTES = 16
BURST_BYTES = 256 * 1024
BYTES_PER_MS_PER_MBIT = 125.0
SPIN_S = 0.001  # the last ms of an emulated wait is waited out precisely (see Prober._wait_until)
MIN_TRANSFER_MS = 1e-3  # a burst faster than this (loopback) is reported at this floor: ~2 Tbit/s


@dataclass(frozen=True)
class ProbeResult:
    """One probe round: ``rtt_ms`` (ms), ``mbps`` (Mbit/s), from ``samples`` round trips."""

    rtt_ms: float
    mbps: float
    samples: int


def probe_reply(header: TensorHeader) -> list[Any]:
    """The answer to a probe: an empty ``reply`` carrying the probe's id."""
    return pack("reply", header.request_id, {}, stage=PROBE_STAGE)


def estimate(ping_ms: Sequence[float], burst_ms: Sequence[float], burst_bytes: int) -> ProbeResult:
    """RTT and throughput from ping and burst round trips (ms). Pure.

    Raises ValueError when either list is empty or ``burst_bytes`` is not positive.
    """
    if not ping_ms or not burst_ms or burst_bytes <= 0:
        raise ValueError("estimate needs at least one ping, one burst and a positive burst size")
    rtt = min(ping_ms)
    transfer = max(min(burst_ms) - rtt, MIN_TRANSFER_MS)
    return ProbeResult(rtt, burst_bytes / transfer / BYTES_PER_MS_PER_MBIT, len(ping_ms) + len(burst_ms))


class Prober:
    """Measures the link to one data plane endpoint. Not thread-safe: one per thread.

    ``delay_ms(bytes)`` is the sender's emulated uplink (``StageRunner.link_delay_ms``; 0
    for a native node), waited out on ``stop`` before each probe leaves. A round trip that
    gets no answer within ``timeout`` s raises TimeoutError. ``clock`` must be a real one
    (the waits are real).
    """

    def __init__(self, ctx: zmq.Context[Any], endpoint: str, clock: Clock, stop: threading.Event, *,
                 delay_ms: Callable[[int], float] | None = None, curve_server_key: str = "",
                 timeout: float = 5.0) -> None:
        self.endpoint = endpoint
        self._clock = clock
        self._stop = stop
        self._delay_ms = delay_ms or (lambda _n: 0.0)
        self._timeout = timeout
        self._sock: zmq.Socket[Any] = ctx.socket(zmq.DEALER)
        self._sock.setsockopt(zmq.LINGER, 0)
        if curve_server_key:
            set_curve_client(self._sock, curve_server_key)
        self._sock.connect(endpoint)

    def close(self) -> None:
        self._sock.close(0)

    def measure(self, pings: int = 10, bursts: int = 3, burst_bytes: int = BURST_BYTES) -> ProbeResult:
        """``pings`` pings then ``bursts`` bursts; the first ping also opens the connection."""
        self.round_trip_ms(PING_BYTES)  # warm-up: the connection handshake is no part of the RTT
        ping = [self.round_trip_ms(PING_BYTES) for _ in range(pings)]
        burst = [self.round_trip_ms(burst_bytes) for _ in range(bursts)]
        return estimate(ping, burst, burst_bytes)

    def _wait_until(self, due: float) -> bool:
        """Wait until monotonic ``due`` on the stop event, the last :data:`SPIN_S` by yielding
        (a timed wait overshoots by a few tenths of a ms, which is 5 % of a 5 ms RTT); True if stopping."""
        while (remaining := due - self._clock.monotonic()) > 0:
            if remaining > SPIN_S:
                if self._stop.wait(remaining - SPIN_S):
                    return True
            else:
                time.sleep(0)  # yield the GIL; at most SPIN_S per probe message
        return self._stop.is_set()

    def round_trip_ms(self, size: int) -> float:
        """Milliseconds from the probe's start (the emulated uplink included) to its answer."""
        rid = uuid.uuid4().hex
        frames = pack("request", rid, {"pad": np.zeros(size, dtype=np.uint8)}, stage=PROBE_STAGE)
        start = self._clock.monotonic()
        wait_ms = self._delay_ms(size)
        if wait_ms > 0.0 and self._wait_until(start + wait_ms / 1000.0):  # the emulated uplink
            raise TimeoutError("stopping")
        self._sock.send_multipart(frames, copy=False)
        deadline = start + wait_ms / 1000.0 + self._timeout
        while True:
            remaining = deadline - self._clock.monotonic()
            if remaining <= 0 or not self._sock.poll(int(remaining * 1000) + 1, zmq.POLLIN):
                if self._clock.monotonic() >= deadline:
                    raise TimeoutError(f"no probe answer from {self.endpoint} within {self._timeout:.1f}s")
                continue
            header, _ = unpack(self._sock.recv_multipart(copy=False))
            if header.request_id == rid:
                if header.kind != "reply":
                    raise RuntimeError(f"probe refused by {self.endpoint}: {header.error or header.kind}")
                return (self._clock.monotonic() - start) * 1000.0
