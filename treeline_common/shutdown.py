"""Turn SIGTERM/SIGINT into a flag that a process's main thread waits on.

Why not ``threading.Event.set()`` inside the signal handler: Python runs the handler on the
main thread between bytecodes, possibly while that thread is inside ``Event.wait()`` holding
the event's internal lock; ``set()`` then blocks on that same lock forever and the process
ignores SIGTERM. The handler here only assigns an attribute, and :meth:`wait` polls it.
"""

from __future__ import annotations

import contextlib
import ctypes
import signal
import sys
import time
from types import FrameType


class ShutdownSignal:
    """Installs handlers for ``signals`` (main thread only) and records the first one received."""

    def __init__(self, signals: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGINT)) -> None:
        self.received: int | None = None
        for sig in signals:
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        if self.received is None:
            self.received = signum

    def request(self) -> None:
        """Ask for shutdown from code (tests, a failed child) as if a signal had come."""
        if self.received is None:
            self.received = 0

    def __bool__(self) -> bool:
        return self.received is not None

    def wait(self, timeout: float | None = None, poll: float = 0.1) -> bool:
        """Block until a signal arrives (True) or ``timeout`` seconds pass (False)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.received is None:
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(poll)
        return True


_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Ask the kernel to SIGTERM this child when its parent dies, so no child outlives
    a killed ``treeline up`` (Linux; elsewhere a no-op)."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
