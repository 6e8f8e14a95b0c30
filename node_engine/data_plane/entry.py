"""A caller's connection to a service's entry node: one DEALER plus a socket monitor.

The monitor is what lets a :class:`~.service_client.ServiceClient` notice at once that
its entry refused the connection or lost it (a killed node), instead of waiting out an
attempt timeout. Messages sent before the connection is up are queued by zmq and leave
once it is (no ``ZMQ_IMMEDIATE`` here: the first requests of a fresh client must not fail
for want of a finished handshake).

With ``curve_server_key`` the connection is a CURVE client of the entry's CURVE endpoint.

Threading model: used by one thread only (zmq sockets are not thread-safe); no locks.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import zmq
from zmq.utils.monitor import recv_monitor_message

from node_engine.data_plane.client import set_curve_client
from node_engine.data_plane.sockets import readable, tune_buffers

log = logging.getLogger(__name__)

_EVENTS = (zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED | zmq.EVENT_CONNECT_RETRIED
           | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)
HEARTBEAT_MS = 1000  # a silently vanished entry counts as lost after 3 heartbeats


class EntryConnection:
    """DEALER to ``endpoint``; ``state`` is ``connecting`` | ``up`` | ``down``."""

    def __init__(self, ctx: zmq.Context[Any], endpoint: str, curve_server_key: str = "") -> None:
        self.endpoint = endpoint
        self.curve_server_key = curve_server_key
        self.state = "connecting"
        self._dealer = ctx.socket(zmq.DEALER)
        self._dealer.setsockopt(zmq.LINGER, 0)
        tune_buffers(self._dealer)
        if curve_server_key:
            set_curve_client(self._dealer, curve_server_key)
        self._dealer.setsockopt(zmq.HEARTBEAT_IVL, HEARTBEAT_MS)
        self._dealer.setsockopt(zmq.HEARTBEAT_TIMEOUT, 3 * HEARTBEAT_MS)
        self._monitor = self._dealer.get_monitor_socket(_EVENTS)  # before connect: see every event
        self._dealer.connect(endpoint)
        self._poller = zmq.Poller()
        self._poller.register(self._dealer, zmq.POLLIN)
        self._poller.register(self._monitor, zmq.POLLIN)
        self._closed = False

    def send(self, frames: list[Any]) -> bool:
        """Queue one message; False if the send queue is full."""
        try:
            self._dealer.send_multipart(frames, copy=False, flags=zmq.NOBLOCK)
        except zmq.Again:
            return False
        return True

    def wait(self, timeout_ms: int) -> str:
        """Wait up to ``timeout_ms`` for input; return why the connection failed ("" if it did not).

        A non-empty answer ("connection refused", "connection lost") means whatever was
        sent and not yet answered will not be answered over this connection.
        """
        events = dict(self._poller.poll(timeout_ms))
        failure = ""
        was = self.state
        if self._monitor in events:
            while readable(self._monitor):
                try:
                    event = int(recv_monitor_message(self._monitor, zmq.NOBLOCK)["event"])
                except zmq.ZMQError:
                    break
                if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                    self.state = "up"
                elif event == zmq.EVENT_DISCONNECTED:  # a lost connection is followed by retries:
                    self.state, failure = "down", failure or "connection lost"  # report the first
                elif event == zmq.EVENT_CONNECT_RETRIED and self.state != "up":
                    self.state, failure = "down", failure or "connection refused"
                elif event in (zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL, zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL):
                    self.state, failure = "down", failure or "handshake failed (CURVE key or mechanism)"
        if failure and was != "down":
            log.info("entry %s: %s", self.endpoint, failure)
        return failure

    def received(self) -> list[list[Any]]:
        """Every message waiting on the socket (frames, not copied)."""
        messages: list[list[Any]] = []
        while readable(self._dealer):
            messages.append(self._dealer.recv_multipart(copy=False))
        return messages

    def close(self) -> None:
        """Close both sockets; idempotent. Unsent queued messages are dropped."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(zmq.ZMQError):
            self._dealer.disable_monitor()
        self._monitor.close(0)
        self._dealer.close(0)
