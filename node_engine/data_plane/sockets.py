"""The data plane's TCP sockets: the server's ROUTERs, and the kernel buffers every socket gets.

:func:`bind_router` binds one ROUTER (plain, or a CURVE server with ``curve_secret_key``).
:func:`tune_buffers` sets the kernel send and receive buffers of a data-plane socket
(ROUTERs, downstream DEALERs, clients) to :data:`SOCKET_BUFFER_BYTES`. With the kernel's
defaults (16 KB send, 128 KB receive, grown by autotuning) a 600 KB request (MobileNetV2's
input) crosses loopback in several reads, each an I/O-thread wake-up: a 600 KB request with
a 4 KB answer between two processes took 443-458 us p50, and 269-318 us with 2 MB buffers
(100 KB: no difference; /tmp scratch measurement on the 2-core host, under load). The kernel
caps the value at ``net.core.{r,w}mem_max``.

It also sets the socket's ``copy_threshold`` to :data:`COPY_THRESHOLD_BYTES`: a frame sent
with ``copy=False`` below it is copied by libzmq (the GIL released) instead of shared. A
shared frame costs pyzmq a Python bookkeeping entry and a wake of its garbage-collector
thread when libzmq lets go of it, which on a busy 2-core host competes with the very threads
serving the request; a copy of 100 KB costs a few microseconds. Measured under load (scratch
A/B, alternating): one 100 KB request to one node 0.30-0.35 ms p50 copied against
0.34-0.38 ms shared in 4 of 4 pairs; a chain of node processes 0.47-0.56 against 0.52-0.59 ms
per extra stage. Larger frames stay shared: their copy grows with their size, the wake does not.

:func:`readable` is the cheap "is there more?" test of the drain loops. The worker wake pair
lives with the workers (:mod:`.workers`).
"""

from __future__ import annotations

from typing import Any

import zmq

SOCKET_BUFFER_BYTES = 2 * 1024 * 1024
COPY_THRESHOLD_BYTES = 1024 * 1024


def tune_buffers(sock: zmq.Socket[Any]) -> None:
    """Give ``sock`` (before it binds or connects) the data plane's kernel buffer sizes and copy threshold."""
    sock.setsockopt(zmq.SNDBUF, SOCKET_BUFFER_BYTES)
    sock.setsockopt(zmq.RCVBUF, SOCKET_BUFFER_BYTES)
    sock.copy_threshold = COPY_THRESHOLD_BYTES


def readable(sock: zmq.Socket[Any]) -> bool:
    """Whether a message waits on ``sock``: its ``ZMQ_EVENTS`` (1 us here; ``Socket.poll(0)``
    builds a Poller per call: 4.5 us, paid per message by every drain loop of the poll thread)."""
    return bool(int(sock.get(zmq.EVENTS)) & zmq.POLLIN)


def bind_router(ctx: zmq.Context[Any], host: str, port: int,
                curve_secret_key: bytes | None = None) -> tuple[zmq.Socket[Any], str]:
    """A ROUTER bound to ``tcp://host:port`` (port 0: a free one) and its endpoint."""
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    router.setsockopt(zmq.ROUTER_MANDATORY, 1)  # an unroutable reply raises instead of vanishing
    tune_buffers(router)
    if curve_secret_key:
        router.curve_server = True
        router.curve_secretkey = curve_secret_key
    if port:
        router.bind(f"tcp://{host}:{port}")
    else:
        port = router.bind_to_random_port(f"tcp://{host}")
    return router, f"tcp://{host}:{port}"
