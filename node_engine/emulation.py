"""Device emulation: make a fast host behave like a slower device, explicitly.

A profile with ``speed_factor`` < 1 (e.g. 0.25 for an ``rpi4``) runs the *real* partition
at host speed and then waits out the difference, ``elapsed / speed_factor - elapsed``, so
the stage takes as long as it would on the emulated device. The computation is never
replaced by a wait: the outputs are always the real outputs. The wait is on the node's
stop event, so a shutdown is never held up by an emulated slowdown. Native nodes
(``speed_factor`` >= 1) never wait.
"""

from __future__ import annotations

import threading


def slowdown_seconds(elapsed_s: float, speed_factor: float) -> float:
    """Extra seconds a device at ``speed_factor`` needs beyond the host's ``elapsed_s``."""
    if speed_factor >= 1.0 or speed_factor <= 0.0 or elapsed_s <= 0.0:
        return 0.0
    return elapsed_s / speed_factor - elapsed_s


class Emulator:
    """Applies a profile's slowdown after real work; ``stop`` interrupts the wait."""

    def __init__(self, speed_factor: float, stop: threading.Event | None = None) -> None:
        self.speed_factor = speed_factor
        self._stop = stop or threading.Event()

    def slow_down(self, elapsed_s: float) -> float:
        """Wait out the emulated difference for work that took ``elapsed_s``; return the wait."""
        extra = slowdown_seconds(elapsed_s, self.speed_factor)
        if extra > 0.0:
            self._stop.wait(extra)  # device emulation: the real compute already ran
        return extra
