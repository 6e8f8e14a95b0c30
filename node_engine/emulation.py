"""Device emulation: make a fast host behave like a slower device, explicitly.

Compute: a profile with ``speed_factor`` < 1 (e.g. 0.25 for an ``rpi4``) runs the *real*
partition at host speed and then waits out the difference, ``elapsed / speed_factor -
elapsed``, so the stage takes as long as it would on the emulated device. The computation
is never replaced by a wait: the outputs are always the real outputs. The wait is on the
node's stop event, so a shutdown is never held up by an emulated slowdown. Native nodes
(``speed_factor`` >= 1) never wait.

Links: every node engine on one host talks over loopback, which is far faster than the
uplink of the device being emulated. An emulated node therefore charges its own uplink
(``link_rtt_ms + bytes / (uplink_mbps * 125)`` ms; 1 Mbit/s = 125 bytes/ms, see
docs/contracts.md "Scheduler v2 additions") before it sends tensors to another node. The
data plane waits that out on a timer, not in a compute worker (see
:mod:`node_engine.data_plane.forwarding`), and the real bytes are still sent. Native nodes
have no emulated link and never wait.

Battery: an emulated profile with a battery and a capacity (``battery_wh``) gets an
:class:`~node_engine.sources.battery_emulated.EmulatedBattery`; every stage run draws the
profile's ``power_w`` for the emulated compute time (``elapsed / speed_factor``) from it, so
its charge falls with the work the node does (the model: that module's docstring).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from node_engine.sources.battery_emulated import EmulatedBattery, emulated_compute_s
from treeline_common.profiles import DeviceProfile

BYTES_PER_MS_PER_MBIT = 125.0  # 1 Mbit/s = 1e6 bits / 8 / 1000 ms


def slowdown_seconds(elapsed_s: float, speed_factor: float) -> float:
    """Extra seconds a device at ``speed_factor`` needs beyond the host's ``elapsed_s``."""
    if speed_factor >= 1.0 or speed_factor <= 0.0 or elapsed_s <= 0.0:
        return 0.0
    return elapsed_s / speed_factor - elapsed_s


def link_delay_ms(payload_bytes: int, uplink_mbps: float, link_rtt_ms: float) -> float:
    """Milliseconds to ship ``payload_bytes`` over an uplink of ``uplink_mbps`` with ``link_rtt_ms``.

    The same formula the planner uses for a link's cost, so what the emulation charges and
    what the plan predicts agree. A non-positive bandwidth is treated as "no bandwidth
    term" rather than an infinite wait (a profile that declares no uplink is not emulated).
    """
    transfer = payload_bytes / (uplink_mbps * BYTES_PER_MS_PER_MBIT) if uplink_mbps > 0 else 0.0
    return max(0.0, link_rtt_ms) + max(0.0, transfer)


@dataclass(frozen=True)
class EmulatedLink:
    """The sending node's own uplink: its figures alone decide the cost of what it sends."""

    uplink_mbps: float
    rtt_ms: float

    def delay_ms(self, payload_bytes: int) -> float:
        return link_delay_ms(payload_bytes, self.uplink_mbps, self.rtt_ms)


class Emulator:
    """Applies a profile's slowdown after real work; ``stop`` interrupts the wait.

    ``link`` is the emulated uplink, or None for a node whose sends go out as fast as the
    host allows (every native node). ``battery``: the emulated battery stage runs draw from
    (None: the node has none).
    """

    def __init__(self, speed_factor: float, stop: threading.Event | None = None,
                 link: EmulatedLink | None = None, battery: EmulatedBattery | None = None) -> None:
        self.speed_factor = speed_factor
        self.link = link
        self.battery = battery
        self._stop = stop or threading.Event()

    @classmethod
    def from_profile(cls, profile: DeviceProfile, stop: threading.Event | None = None,
                     battery: EmulatedBattery | None = None) -> Emulator:
        """The emulation a profile asks for: none at all for a native (real) device."""
        if not profile.emulated:
            return cls(1.0, stop)
        link = EmulatedLink(profile.uplink_mbps, profile.link_rtt_ms)
        return cls(profile.speed_factor, stop, link, battery)

    def slow_down(self, elapsed_s: float) -> float:
        """Wait out the emulated difference for work that took ``elapsed_s``; return the wait.
        The emulated battery (if any) is drawn for the emulated compute time first."""
        if self.battery is not None:
            self.battery.draw(emulated_compute_s(elapsed_s, self.speed_factor))
        extra = slowdown_seconds(elapsed_s, self.speed_factor)
        if extra > 0.0:
            self._stop.wait(extra)  # device emulation: the real compute already ran
        return extra

    def link_delay_ms(self, payload_bytes: int) -> float:
        """Emulated ms before ``payload_bytes`` may leave for another node (0 without a link)."""
        return self.link.delay_ms(payload_bytes) if self.link is not None else 0.0
