"""Small helpers for processes on loopback: free ports and polling with a deadline."""

from __future__ import annotations

import random
import socket
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


LISTEN_PORTS_FLOOR = 20000  # listening ports are picked from here up to the OS's ephemeral range


def _ephemeral_floor() -> int:
    """The first port the OS hands to outgoing connections (Linux: ip_local_port_range)."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range", encoding="ascii") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago, below the OS's ephemeral range.

    A port the OS picks (bind to 0) comes from the range outgoing connections also draw from:
    between this check and the server's own bind, a busy machine's next outgoing connection may
    take it ("address in use"). Ports from ``LISTEN_PORTS_FLOOR`` up to that range are only ever
    taken by listeners, so a random free one there stays free; bind to 0 is the fallback.
    """
    rng = random.SystemRandom()
    top = _ephemeral_floor()
    for _ in range(64 if top > LISTEN_PORTS_FLOOR + 100 else 0):
        port = rng.randrange(LISTEN_PORTS_FLOOR, top)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def poll_until(
    probe: Callable[[], T | None],
    timeout: float,
    interval: float = 0.05,
    what: str = "condition",
) -> T:
    """Call ``probe`` until it returns something truthy; return it or raise TimeoutError.

    This is how tests and the CLI wait for another process: poll with a deadline, never a
    fixed sleep.
    """
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while True:
        try:
            result = probe()
            if result:
                return result
        except Exception as exc:  # noqa: BLE001 - the probe may fail until the peer is up
            last_exc = exc
        if time.monotonic() >= deadline:
            suffix = f" (last error: {last_exc})" if last_exc else ""
            raise TimeoutError(f"timed out after {timeout:.1f}s waiting for {what}{suffix}")
        time.sleep(interval)
