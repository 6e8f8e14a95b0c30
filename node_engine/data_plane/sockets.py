"""The server's own sockets: its ROUTERs, and the wake pair its workers ring.

:func:`bind_router` binds one ROUTER (plain, or a CURVE server with ``curve_secret_key``).
:class:`Wake` is a one-frame inproc PUSH/PULL pair: a worker that queued a result rings it
(:meth:`Wake.ring`, any thread, under a lock: zmq sockets are not thread-safe) and the poll
thread, which polls :attr:`Wake.pull`, empties it (:meth:`Wake.drain`). A ring while one is
already queued is dropped: one wake is enough for the poll thread to drain every result.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any

import zmq


def bind_router(ctx: zmq.Context[Any], host: str, port: int,
                curve_secret_key: bytes | None = None) -> tuple[zmq.Socket[Any], str]:
    """A ROUTER bound to ``tcp://host:port`` (port 0: a free one) and its endpoint."""
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    router.setsockopt(zmq.ROUTER_MANDATORY, 1)  # an unroutable reply raises instead of vanishing
    if curve_secret_key:
        router.curve_server = True
        router.curve_secretkey = curve_secret_key
    if port:
        router.bind(f"tcp://{host}:{port}")
    else:
        port = router.bind_to_random_port(f"tcp://{host}")
    return router, f"tcp://{host}:{port}"


class Wake:
    """Workers ring, the poll thread drains (see the module docstring)."""

    def __init__(self, ctx: zmq.Context[Any], name: str) -> None:
        address = f"inproc://treeline-wake-{name}"
        self.pull = ctx.socket(zmq.PULL)
        self.pull.bind(address)
        self._push: zmq.Socket[Any] | None = ctx.socket(zmq.PUSH)
        self._push.setsockopt(zmq.LINGER, 0)
        self._push.connect(address)
        self._lock = threading.Lock()

    def ring(self) -> None:
        """Wake the poll thread (any thread; a no-op once :meth:`close_push` ran)."""
        with self._lock:
            if self._push is not None:
                with contextlib.suppress(zmq.ZMQError):  # a wake is already queued; that one will do
                    self._push.send(b"", zmq.NOBLOCK)

    def drain(self) -> None:
        """Take every queued wake (poll thread)."""
        while self.pull.poll(0):
            self.pull.recv()

    def close_push(self) -> None:
        """Close the ringing side (idempotent); workers still running then ring nothing."""
        with self._lock:
            if self._push is not None:
                self._push.close(0)
                self._push = None
