"""The clock, injected wherever time matters, with a fake for tests.

Liveness, backoff and telemetry periods are pure functions of ``clock.now()``; tests
drive a :class:`FakeClock` instead of sleeping.
"""

from __future__ import annotations

import threading
import time
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Seconds since the epoch (wall clock, comparable across processes)."""

    def monotonic(self) -> float:
        """Seconds on a monotonic clock, for durations within one process."""


class SystemClock:
    def now(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()


class FakeClock:
    """A clock that only moves when told to. Thread-safe."""

    def __init__(self, start: float = 1_000_000.0) -> None:
        self._t = start
        self._lock = threading.Lock()

    def now(self) -> float:
        with self._lock:
            return self._t

    def monotonic(self) -> float:
        return self.now()

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._t += seconds
