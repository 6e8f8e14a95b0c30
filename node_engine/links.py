"""Measured links: RTT and throughput from this node to the nodes it sends tensors to.

Two sources, both reported in telemetry as :class:`~treeline_common.messages.LinkReading`:

- **probe** (:mod:`node_engine.data_plane.probe`): :class:`LinkMonitor` probes a peer as soon
  as a stage here is routed to it (deploy time), then every ``interval`` seconds (default
  :data:`DEFAULT_PROBE_INTERVAL`) while a stage is still routed to it;
- **passive**: every forward whose answer comes back is a sample ``(payload bytes, link ms)``
  (see :mod:`node_engine.data_plane.downstream`); per peer, ``mbps`` is an EWMA (weight
  :data:`EWMA_ALPHA` on the newest) of ``bytes / (link ms - rtt) / 125`` where ``rtt`` is the
  peer's latest probe RTT (0 before any probe: the figure is then the effective throughput, a
  lower bound), and ``rtt_ms`` is that probe RTT, or the fastest sample seen (an upper bound).

A reading older than ``max_age`` seconds (a peer no longer used) is dropped. Peers are keyed
by node id; co-located stages have no link and are never probed.

Threading: :class:`LinkBook` is shared by the data plane's poll thread (passive samples),
the monitor thread (probes) and the telemetry loop (readings): every method takes its lock.
The maths (:func:`ewma`, :func:`passive_mbps`) are pure.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import zmq

from node_engine.data_plane.probe import BYTES_PER_MS_PER_MBIT, MIN_TRANSFER_MS, Prober, ProbeResult
from node_engine.stages import StageTable
from treeline_common.clock import Clock
from treeline_common.messages import LinkReading

log = logging.getLogger(__name__)

DEFAULT_PROBE_INTERVAL = 60.0  # s between probes of a peer still in use
CHECK_INTERVAL = 1.0  # s between looks at the stage table for newly routed peers
EWMA_ALPHA = 0.2
DEFAULT_MAX_AGE = 300.0  # s: a reading not refreshed for this long is dropped


def ewma(previous: float | None, sample: float, alpha: float = EWMA_ALPHA) -> float:
    """Exponentially weighted mean: ``sample`` alone at first, then ``alpha`` on the newest."""
    return sample if previous is None else alpha * sample + (1.0 - alpha) * previous


def passive_mbps(payload: int, link_ms: float, rtt_ms: float) -> float:
    """Throughput (Mbit/s) of one forward of ``payload`` bytes whose link took ``link_ms``."""
    return payload / max(link_ms - rtt_ms, MIN_TRANSFER_MS) / BYTES_PER_MS_PER_MBIT


@dataclass
class _Passive:
    mbps: float
    min_ms: float
    samples: int
    at: float


class LinkBook:
    """Latest figures per peer and source. Thread-safe (see the module docstring)."""

    def __init__(self, clock: Clock, *, alpha: float = EWMA_ALPHA, max_age: float = DEFAULT_MAX_AGE) -> None:
        self._clock = clock
        self._alpha = alpha
        self._max_age = max_age
        self._lock = threading.Lock()
        self._probes: dict[str, LinkReading] = {}
        self._passive: dict[str, _Passive] = {}

    def record_probe(self, peer: str, result: ProbeResult) -> LinkReading:
        reading = LinkReading(peer=peer, rtt_ms=result.rtt_ms, mbps=result.mbps, samples=result.samples,
                              measured_at=self._clock.now(), source="probe")
        with self._lock:
            self._probes[peer] = reading
        return reading

    def record_passive(self, peer: str, payload: int, link_ms: float) -> None:
        """One real forward to ``peer``: ``payload`` bytes, ``link_ms`` on the link. Ignores ``payload`` 0."""
        if payload <= 0 or link_ms <= 0.0:
            return
        with self._lock:
            probe = self._probes.get(peer)
            sample = passive_mbps(payload, link_ms, probe.rtt_ms if probe is not None else 0.0)
            old = self._passive.get(peer)
            if old is None:
                self._passive[peer] = _Passive(sample, link_ms, 1, self._clock.now())
            else:
                self._passive[peer] = _Passive(ewma(old.mbps, sample, self._alpha), min(old.min_ms, link_ms),
                                               old.samples + 1, self._clock.now())

    def readings(self) -> list[LinkReading]:
        """Every reading younger than ``max_age``, probes first, each sorted by peer."""
        now = self._clock.now()
        with self._lock:
            out = [r for _, r in sorted(self._probes.items()) if now - r.measured_at <= self._max_age]
            for peer, p in sorted(self._passive.items()):
                if now - p.at > self._max_age:
                    continue
                probe = self._probes.get(peer)
                out.append(LinkReading(peer=peer, rtt_ms=probe.rtt_ms if probe is not None else p.min_ms,
                                       mbps=p.mbps, samples=p.samples, measured_at=p.at, source="passive"))
        return out


@dataclass(frozen=True)
class Peer:
    """A node this one sends tensors to: its id and where (and with which CURVE key) to reach it."""

    node_id: str
    endpoint: str
    curve_server_key: str = ""


def routed_peers(stages: StageTable, own_endpoints: tuple[str, ...]) -> dict[str, Peer]:
    """Peers the stages here forward to, by node id (co-located next stages left out)."""
    peers: dict[str, Peer] = {}
    for stage in stages.all():
        nxt = stage.next
        if nxt is None or not nxt.endpoint or nxt.endpoint in own_endpoints:
            continue
        peers.setdefault(nxt.node_id, Peer(nxt.node_id, nxt.endpoint, nxt.curve_server_key))
    return peers


class LinkMonitor:
    """Probes the peers of the stages in ``stages`` (deploy time, then every ``interval`` s).

    ``own_endpoints()`` names this node's data plane endpoints (no link to itself);
    ``delay_ms(bytes)`` is the node's emulated uplink (see :class:`~node_engine.data_plane.probe.Prober`).
    :meth:`on_transfer` is the data plane's passive observer. :meth:`start` starts the
    thread; it ends when ``stop`` is set or :meth:`close` is called. A failed probe is logged
    and retried at the next interval; it never reports a figure.
    """

    def __init__(self, stages: StageTable, own_endpoints: Callable[[], tuple[str, ...]], clock: Clock,
                 stop: threading.Event, *, delay_ms: Callable[[int], float] | None = None,
                 interval: float = DEFAULT_PROBE_INTERVAL, check_interval: float = CHECK_INTERVAL,
                 book: LinkBook | None = None, probe_timeout: float = 5.0) -> None:
        self.book = book or LinkBook(clock, max_age=max(DEFAULT_MAX_AGE, 3 * interval))
        self._stages = stages
        self._own = own_endpoints
        self._clock = clock
        self._stop = stop
        self._delay_ms = delay_ms
        self._interval = interval
        self._check = min(check_interval, interval)
        self._timeout = probe_timeout
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._by_endpoint: dict[str, str] = {}  # endpoint -> peer node id (for passive samples)
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="link-monitor", daemon=True)
        self._thread.start()

    def close(self, timeout: float = 2.0) -> None:
        self._closed.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def readings(self) -> list[LinkReading]:
        return self.book.readings()

    def on_transfer(self, endpoint: str, payload: int, link_ms: float) -> None:
        """Passive sample from the data plane (poll thread): recorded under the peer's node id."""
        with self._lock:
            peer = self._by_endpoint.get(endpoint)
        if peer is not None:
            self.book.record_passive(peer, payload, link_ms)

    def _run(self) -> None:
        ctx: zmq.Context[Any] = zmq.Context()
        due: dict[str, float] = {}  # peer -> monotonic time of its next probe
        try:
            while not (self._stop.is_set() or self._closed.is_set()):
                peers = routed_peers(self._stages, self._own())
                with self._lock:
                    self._by_endpoint = {p.endpoint: p.node_id for p in peers.values()}
                for peer in peers.values():
                    if self._clock.monotonic() >= due.get(peer.node_id, 0.0):
                        self._probe(ctx, peer)
                        due[peer.node_id] = self._clock.monotonic() + self._interval
                for gone in set(due) - set(peers):
                    del due[gone]  # routed again later: probed again at once
                if self._stop.wait(self._check) or self._closed.is_set():
                    return
        finally:
            ctx.destroy(0)

    def _probe(self, ctx: zmq.Context[Any], peer: Peer) -> None:
        prober = Prober(ctx, peer.endpoint, self._clock, self._stop, delay_ms=self._delay_ms,
                        curve_server_key=peer.curve_server_key, timeout=self._timeout)
        try:
            reading = self.book.record_probe(peer.node_id, prober.measure())
            log.info("link to %s (%s): rtt %.2f ms, %.1f Mbit/s", peer.node_id, peer.endpoint,
                     reading.rtt_ms, reading.mbps)
        except (TimeoutError, RuntimeError, zmq.ZMQError, ValueError) as exc:
            if not self._stop.is_set():
                log.warning("probe of %s (%s) failed: %s", peer.node_id, peer.endpoint, exc)
        finally:
            prober.close()
