"""Many paho clients driven by a few threads: a selector loop per shard instead of one
``loop_start`` thread per client.

paho's external-loop API does the MQTT work (``loop_read`` / ``loop_write`` / ``loop_misc``);
a :class:`NetworkShard` owns a :mod:`selectors` selector over its clients' sockets and is the
only thread that touches it. Other threads talk to it through a queue and a wake-up
socketpair: adding a client (the shard connects it, so the socket callbacks run on its thread)
and "this client has data to write" (paho's ``on_socket_register_write``, called by whichever
thread published). ``loop_misc`` (keepalive pings, lost-connection detection) runs for every
client once a second.

Reconnects: paho's external loop does not reconnect by itself. A client whose connection is
lost (not stopped by us) is reconnected by its shard after ``reconnect_delay`` seconds, through
the :class:`Session` hook ``before_connect`` (which arms a new will with a new seq, as a real
node does). A refused connect is retried the same way.

:meth:`NetworkShard.kill` stops the loop and closes every socket with ``SO_LINGER`` 0 (a TCP
reset, no DISCONNECT): the broker takes each as a crashed client and publishes its will.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import selectors
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt

log = logging.getLogger(__name__)

MISC_INTERVAL = 1.0  # s between loop_misc passes (keepalive); paho needs far less than keepalive/2
SELECT_TIMEOUT = 0.25  # s: the longest the loop sleeps without an event


@dataclass(eq=False)
class Session:
    """One MQTT connection the shard drives. ``before_connect`` runs before every (re)connect
    attempt on the shard's thread (arm the will there); paho callbacks are the caller's."""

    client: mqtt.Client
    host: str
    port: int
    name: str = ""  # for the log
    keepalive: int = 30
    before_connect: Callable[[mqtt.Client], None] | None = None
    stopped: bool = False  # we asked for the disconnect: no reconnect
    retry_at: float | None = None  # when a lost connection is retried (monotonic)
    sock: Any = field(default=None, repr=False)


class NetworkShard:
    """A thread driving a set of :class:`Session` objects; see the module docstring."""

    def __init__(self, name: str, reconnect_delay: float = 1.0) -> None:
        self.name = name
        self._reconnect_delay = reconnect_delay
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._commands: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._write_wanted: queue.SimpleQueue[Session] = queue.SimpleQueue()
        self._woken = threading.Event()
        self._sessions: list[Session] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"sim-net-{name}", daemon=True)

    @property
    def sessions(self) -> list[Session]:
        return list(self._sessions)

    def start(self) -> None:
        self._thread.start()

    def add(self, session: Session) -> None:
        """Hand ``session`` to the shard, which connects it on its own thread."""
        client = session.client
        client.on_socket_open = lambda _c, _u, sock: self._opened(session, sock)
        client.on_socket_close = lambda _c, _u, sock: self._closed(session, sock)
        client.on_socket_register_write = lambda _c, _u, _s: self._want_write(session)
        client.on_socket_unregister_write = lambda _c, _u, _s: None  # the loop checks want_write()
        self._call(lambda: self._connect(session))

    def disconnect_all(self, timeout: float) -> None:
        """Send DISCONNECT on every session (no will) and wait up to ``timeout`` for the writes."""
        done = threading.Event()

        def disconnect() -> None:
            for session in self._sessions:
                session.stopped = True
                with contextlib.suppress(Exception):
                    session.client.disconnect()
            done.set()

        self._call(disconnect)
        done.wait(timeout)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and any(s.sock is not None for s in self._sessions):
            time.sleep(0.02)

    def stop(self, timeout: float = 2.0) -> None:
        """End the loop thread; sockets still open are closed (gracefully)."""
        self._stop.set()
        self._wake()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        for session in self._sessions:
            self._close_socket(session, reset=False)
        self._selector.close()
        self._wake_r.close()
        self._wake_w.close()

    def kill(self, timeout: float = 2.0) -> None:
        """Stop the loop and reset every connection (the broker publishes the wills)."""
        self._stop.set()
        self._wake()
        if self._thread.is_alive():
            self._thread.join(timeout)
        for session in self._sessions:
            session.stopped = True
            self._close_socket(session, reset=True)
        self._selector.close()
        self._wake_r.close()
        self._wake_w.close()

    # ---------------------------------------------------------------- other threads -> shard

    def _call(self, command: Callable[[], None]) -> None:
        self._commands.put(command)
        self._wake()

    def _want_write(self, session: Session) -> None:
        self._write_wanted.put(session)
        if threading.current_thread() is not self._thread:
            self._wake()

    def _wake(self) -> None:
        if self._woken.is_set():
            return
        self._woken.set()
        with contextlib.suppress(OSError):  # a full pipe is already a wake-up
            self._wake_w.send(b"\0")

    # ---------------------------------------------------------------- socket callbacks (shard thread)

    def _opened(self, session: Session, sock: Any) -> None:
        session.sock = sock
        with contextlib.suppress(KeyError, ValueError):
            self._selector.register(sock, selectors.EVENT_READ, session)

    def _closed(self, session: Session, sock: Any) -> None:
        with contextlib.suppress(KeyError, ValueError, OSError):
            self._selector.unregister(sock)
        session.sock = None
        if not session.stopped and not self._stop.is_set():
            session.retry_at = time.monotonic() + self._reconnect_delay

    def _close_socket(self, session: Session, reset: bool) -> None:
        sock = session.client.socket()
        if sock is None:
            return
        with contextlib.suppress(Exception):
            if reset and isinstance(sock, socket.socket):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()
        session.sock = None

    # ---------------------------------------------------------------- the loop

    def _connect(self, session: Session) -> None:
        session.retry_at = None
        if session not in self._sessions:
            self._sessions.append(session)
        if session.stopped:
            return
        try:
            if session.before_connect is not None:
                session.before_connect(session.client)
            session.client.connect(session.host, session.port, keepalive=session.keepalive)
        except (OSError, ValueError) as exc:
            log.debug("connect to %s:%s failed: %s", session.host, session.port, exc)
            session.retry_at = time.monotonic() + self._reconnect_delay

    def _run(self) -> None:
        next_misc = time.monotonic() + MISC_INTERVAL
        while not self._stop.is_set():
            try:
                events = self._selector.select(SELECT_TIMEOUT)
            except (OSError, ValueError):
                if self._stop.is_set():
                    return
                raise
            self._woken.clear()
            for key, mask in events:
                session = key.data
                if session is None:
                    with contextlib.suppress(OSError):
                        self._wake_r.recv(4096)
                    continue
                try:
                    if mask & selectors.EVENT_READ:
                        session.client.loop_read()
                    if mask & selectors.EVENT_WRITE and session.sock is not None:
                        session.client.loop_write()
                        self._watch_writes(session)
                except Exception:  # one session's failure must not stop the others' loop
                    log.exception("shard %s: %s failed", self.name, session.name)
            self._drain()
            now = time.monotonic()
            if now >= next_misc:
                next_misc = now + MISC_INTERVAL
                try:
                    self._misc(now)
                except Exception:
                    log.exception("shard %s: keepalive pass failed", self.name)

    def _drain(self) -> None:
        while True:
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                break
            try:
                command()
            except Exception:
                log.exception("shard %s: command failed", self.name)
        seen: set[int] = set()
        while True:
            try:
                session = self._write_wanted.get_nowait()
            except queue.Empty:
                break
            if id(session) in seen or session.sock is None:
                continue
            seen.add(id(session))
            session.client.loop_write()  # most writes complete at once; the rest wait for EVENT_WRITE
            self._watch_writes(session)

    def _watch_writes(self, session: Session) -> None:
        if session.sock is None:
            return
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if session.client.want_write() else 0)
        with contextlib.suppress(KeyError, ValueError):
            if self._selector.get_key(session.sock).events != events:
                self._selector.modify(session.sock, events, session)

    def _misc(self, now: float) -> None:
        for session in self._sessions:
            if session.sock is not None:
                session.client.loop_misc()
            elif session.retry_at is not None and now >= session.retry_at and not session.stopped:
                log.info("shard %s: reconnecting %s", self.name, session.name)
                self._connect(session)
