"""Client of the tensor data plane: send inputs to a pipeline's entry stage, get outputs back.

One DEALER socket per client, connected to one node's ROUTER: this is the low-level client
that addresses a node. Callers that address a *service* (and must survive its entry node
moving or dying) use :class:`~node_engine.data_plane.service_client.ServiceClient`, which
retries on top of the same framing.

Requests carry a random id (or the caller's: a retry MUST reuse the id of the request it
repeats, so the node answers it once) and replies are matched by it, so a reply that
arrives after its request timed out is recognised and dropped. An error reply raises
:class:`DataPlaneError`, a RuntimeError carrying the wire's error ``code``. A client is NOT
thread-safe (zmq sockets are not); use one per thread. Arrays in the results are read-only
views over the received frames (no copy); copy one before writing to it.

With ``key`` (hex: a deployment's caller key, or its data key) every request carries its
authenticator; with ``curve_server_key`` (the node's Z85 CURVE public key) the client talks
to the node's CURVE endpoint, encrypted. A plain client cannot talk to a CURVE endpoint: the
handshake fails and no request ever arrives (the call times out).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import zmq

from node_engine.data_plane.sockets import tune_buffers
from treeline_common.clock import Clock, SystemClock
from treeline_common.tensor_wire import FramingError, TensorHeader, pack, unpack

log = logging.getLogger(__name__)

Outputs = dict[str, np.ndarray]
Timings = dict[str, float]


class DataPlaneError(RuntimeError):
    """An ``error`` reply; ``code`` is one of :data:`~treeline_common.tensor_wire.ERROR_CODES` or ""."""

    def __init__(self, message: str, code: str = "", request_id: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.request_id = request_id


def new_request_id() -> str:
    """A fresh random request id (uuid4 hex): what callers use unless they retry a request."""
    return uuid.uuid4().hex


class TensorClient:
    """Talks to one data-plane endpoint (``tcp://host:port``). Use as a context manager."""

    def __init__(self, endpoint: str, *, context: zmq.Context[Any] | None = None,
                 clock: Clock | None = None, key: str = "", curve_server_key: str = "") -> None:
        self.endpoint = endpoint
        self._own_context = context is None
        self._ctx: zmq.Context[Any] = context or zmq.Context()
        self._clock = clock or SystemClock()
        self._key = bytes.fromhex(key) if key else b""
        self._socket: zmq.Socket[Any] | None = self._ctx.socket(zmq.DEALER)
        self._socket.setsockopt(zmq.LINGER, 0)
        tune_buffers(self._socket)
        if curve_server_key:
            set_curve_client(self._socket, curve_server_key)
        self._socket.connect(endpoint)
        self._poller = zmq.Poller()  # made once: Socket.poll builds a Poller per call
        self._poller.register(self._socket, zmq.POLLIN)

    def __enter__(self) -> TensorClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the socket (and the context if this client made it); idempotent."""
        if self._socket is not None:
            self._socket.close(0)
            self._socket = None
            if self._own_context:
                self._ctx.term()

    # ------------------------------------------------------------------ API

    def infer(self, stage_key: str, inputs: Mapping[str, np.ndarray],
              timeout: float = 10.0, request_id: str | None = None) -> tuple[Outputs, Timings]:
        """Run one request through the pipeline starting at ``stage_key``.

        ``request_id``: the id to send (default: a fresh one); reuse it to retry a request.
        Returns ``(outputs by name, {stage_key: compute_ms} for every stage passed)``.
        Raises DataPlaneError (a RuntimeError) for an error reply and TimeoutError when none
        comes in time.
        """
        deadline = self._clock.monotonic() + timeout
        request_id = self._send(stage_key, inputs, request_id, timeout)
        while True:
            header, outputs = self._receive(deadline, stage_key, timeout)
            if header.request_id == request_id:
                return reply_result(header, outputs)
            log.debug("dropping stale reply %s", header.request_id)

    def infer_many(
        self,
        stage_key: str,
        inputs_iter: Iterable[Mapping[str, np.ndarray]],
        max_in_flight: int = 8,
        timeout: float = 30.0,
        request_ids: Sequence[str] | None = None,
    ) -> list[tuple[Outputs, Timings, float]]:
        """Pipelined requests: keep up to ``max_in_flight`` outstanding, results in input order.

        Each result is ``(outputs, timings, latency_s)`` with the latency measured from send
        to reply. ``timeout`` bounds the wait for any single reply; a request that errors
        raises DataPlaneError naming its index. ``request_ids`` (one per input, distinct)
        replaces the fresh ids.
        """
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be >= 1")
        iterator = iter(inputs_iter)
        ids = iter(request_ids) if request_ids is not None else None
        in_flight: dict[str, tuple[int, float]] = {}
        results: dict[int, tuple[Outputs, Timings, float]] = {}
        sent = 0
        exhausted = False
        while True:
            while not exhausted and len(in_flight) < max_in_flight:
                try:
                    item = next(iterator)
                except StopIteration:
                    exhausted = True
                    break
                chosen = next(ids, None) if ids is not None else None
                in_flight[self._send(stage_key, item, chosen, timeout)] = (sent, self._clock.monotonic())
                sent += 1
            if not in_flight:
                return [results[i] for i in range(sent)]
            header, outputs = self._receive(self._clock.monotonic() + timeout, stage_key, timeout)
            entry = in_flight.pop(header.request_id, None)
            if entry is None:
                log.debug("dropping stale reply %s", header.request_id)
                continue
            index, sent_at = entry
            try:
                out, timings = reply_result(header, outputs)
            except DataPlaneError as exc:
                raise DataPlaneError(f"request {index}: {exc}", exc.code, exc.request_id) from None
            results[index] = (out, timings, self._clock.monotonic() - sent_at)

    # ------------------------------------------------------------------ internals

    def _require_socket(self) -> zmq.Socket[Any]:
        if self._socket is None:
            raise RuntimeError("TensorClient is closed")
        return self._socket

    def _send(self, stage_key: str, inputs: Mapping[str, np.ndarray], request_id: str | None = None,
              timeout: float = 10.0) -> str:
        """Queue one request; TimeoutError when it cannot leave within ``timeout`` s (a DEALER
        with no connection, e.g. a refused CURVE handshake, would block a plain send for ever)."""
        request_id = request_id or new_request_id()
        frames = pack("request", request_id, inputs, stage=stage_key, key=self._key)
        sock = self._require_socket()
        try:
            sock.send_multipart(frames, copy=False, flags=zmq.NOBLOCK)  # the usual case: queued at once
        except zmq.Again:
            try:
                if not sock.poll(int(timeout * 1000) + 1, zmq.POLLOUT):
                    raise zmq.Again()
                sock.send_multipart(frames, copy=False, flags=zmq.NOBLOCK)
            except zmq.Again:
                raise TimeoutError(f"could not send to {self.endpoint} (stage {stage_key}) within "
                                   f"{timeout:.1f}s: no connection takes it") from None
        return request_id

    def _receive(self, deadline: float, stage_key: str, timeout: float) -> tuple[TensorHeader, Outputs]:
        sock = self._require_socket()
        while True:
            remaining = deadline - self._clock.monotonic()
            if remaining <= 0 or not self._poller.poll(int(remaining * 1000) + 1):
                if self._clock.monotonic() >= deadline:
                    raise TimeoutError(f"no reply from {self.endpoint} (stage {stage_key}) "
                                       f"within {timeout:.1f}s")
                continue
            frames = sock.recv_multipart(copy=False)
            try:
                return unpack(frames)
            except FramingError as exc:
                log.warning("dropping malformed reply from %s: %s", self.endpoint, exc)


def set_curve_client(sock: zmq.Socket[Any], server_key: str) -> None:
    """Make ``sock`` (before it connects) a CURVE client of the server with public key ``server_key``.

    The client's own keypair is fresh: servers do not authenticate callers by CURVE key (the
    request's authenticator does that), so nothing needs to know it.
    """
    public, secret = zmq.curve_keypair()
    sock.curve_serverkey = server_key.encode()
    sock.curve_publickey = public
    sock.curve_secretkey = secret


def reply_result(header: TensorHeader, outputs: Outputs) -> tuple[Outputs, Timings]:
    """``(outputs, timings)`` of a reply; DataPlaneError for an error (or unexpected) message."""
    if header.kind == "error":
        raise DataPlaneError(header.error or "error reply without a message", header.code, header.request_id)
    if header.kind != "reply":
        raise DataPlaneError(f"unexpected {header.kind!r} message from the data plane", "", header.request_id)
    return outputs, dict(header.timings)
