"""Bytes each link really carried, read from the kernel's TCP counters (``ss -ti``).

Why the kernel: a figure computed from the plan (cut bytes times requests) would only repeat the
plan; the point of the camera scenario's check is that the raw frame did NOT leave the camera,
whatever the plan says. Every node engine is its own process, so the bytes a node sent to a
peer are the ``bytes_acked`` of that process's established TCP sockets whose remote port is the
peer's data-plane port (the port of its stage endpoints), summed; a difference of two snapshots
is what the link carried meanwhile (ZeroMQ keeps its connections open, so no socket closes in
between; link probes use the same ports, so measure in several short windows and take the median).

Linux only (``ss`` from iproute2, root to see other processes' sockets); :class:`LinkBytesUnavailable`
says why otherwise. :func:`parse_ss` is pure.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterable, Mapping

_PID = re.compile(r"pid=(\d+)")
_ACKED = re.compile(r"\bbytes_acked:(\d+)")
Counters = dict[tuple[int, int], int]  # (pid, remote port) -> bytes acked


class LinkBytesUnavailable(RuntimeError):
    """``ss`` is missing or failed: the bytes a link carried cannot be read on this host."""


def parse_ss(text: str) -> Counters:
    """``{(pid, remote port): bytes acked}`` summed over sockets, from ``ss -tinpH`` output.

    Each socket is a line ``RECV-Q SEND-Q LOCAL PEER users:((..pid=N..))`` followed by an indented
    line of TCP info holding ``bytes_acked:B``; sockets without a pid or a byte count are skipped.
    """
    counters: Counters = {}
    key: tuple[int, int] | None = None
    for line in text.splitlines():
        if not line.strip():
            continue
        if not line[0].isspace():
            fields = line.split()
            pid = _PID.search(line)
            key = None
            if len(fields) >= 4 and pid and ":" in fields[3]:
                port = fields[3].rsplit(":", 1)[1]
                key = (int(pid.group(1)), int(port)) if port.isdigit() else None
            continue
        acked = _ACKED.search(line)
        if key is not None and acked:
            counters[key] = counters.get(key, 0) + int(acked.group(1))
            key = None
    return counters


def snapshot() -> Counters:
    """The TCP byte counters of every established socket on this host, now."""
    binary = shutil.which("ss")
    if binary is None:
        raise LinkBytesUnavailable("`ss` (iproute2) is not installed")
    try:
        done = subprocess.run([binary, "-tinpH", "state", "established"], capture_output=True,
                              text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError) as exc:
        raise LinkBytesUnavailable(f"`ss -tinpH` failed: {exc}") from exc
    return parse_ss(done.stdout)


def endpoint_port(endpoint: str) -> int:
    """``tcp://127.0.0.1:5555`` -> 5555 (ValueError naming the endpoint otherwise)."""
    tail = endpoint.rsplit(":", 1)[-1]
    if not tail.isdigit():
        raise ValueError(f"endpoint {endpoint!r} has no port")
    return int(tail)


def link_bytes(before: Counters, after: Counters, pids: Mapping[str, int],
               ports: Mapping[str, Iterable[int]]) -> dict[tuple[str, str], int]:
    """Bytes each node sent to each other node between two snapshots.

    ``pids``: node name -> its process id; ``ports``: node name -> its data-plane ports.
    Returns ``{(sender, receiver): bytes}`` for every ordered pair of distinct nodes.
    """
    out: dict[tuple[str, str], int] = {}
    for sender, pid in pids.items():
        for receiver, receiver_ports in ports.items():
            if receiver == sender:
                continue
            out[(sender, receiver)] = sum(max(0, after.get((pid, port), 0) - before.get((pid, port), 0))
                                          for port in set(receiver_ports))
    return out
