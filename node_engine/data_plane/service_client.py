"""Client that addresses a *service*, never a node: resolve its entry, send, retry, answer once.

A :class:`ServiceClient` is given a resolver, ``resolve() -> (endpoint, stage_key)``: the
entry stage of the service's current placement (injected, so this module stays free of
HTTP; :func:`treeline_cli.inference.service_resolver` builds one from the root API). It
sends each request to that entry and, when an attempt fails, retries it **with the same
request id** (so an entry node that still has it in flight, or answered it lately,
answers it once: see :mod:`.ledger`) until the request's deadline.

Contract: every request ends in exactly one outcome, an answer or an
:class:`InferenceError`, no later than ``policy.deadline`` seconds after it was first sent
(plus one poll turn). A reply that arrives for an attempt already given up on is still
taken as the answer; a second answer for the same id is dropped.

What is retried (after :func:`backoff_delay`, bounded by ``policy.backoff_cap``):

- no answer within ``policy.attempt_timeout`` (the entry may be hung or gone);
- the connection to the entry lost or refused (seen on a socket monitor, so at once);
- an error reply whose code is in :data:`~treeline_common.tensor_wire.RETRYABLE`:
  unknown stage (placement moved), unreachable or silent downstream, overloaded.

Every retry but an overload re-resolves the entry first (at most once per
``policy.resolve_interval``; a resolver that raises is retried the same way). A new entry
endpoint gets a new socket and every request in flight is sent there at once. Any other
error reply (the partition failed on these inputs, a malformed request) ends the request
with an InferenceError at once: retrying cannot change it.

Keys: a service whose SLA asks for privacy takes only requests signed with its **caller
key** (see :mod:`.security`). The client signs with the key the resolver names (third item
of its answer, so a rotated key is picked up on the next resolve), else with ``key``. A
resolver that also names the entry's CURVE public key (fourth item) makes the client talk to
that entry's CURVE endpoint, encrypted. An ``unauthorized`` answer is not retried.

Threading model: NOT thread-safe (zmq sockets are not); one client per thread. All waiting
is in zmq polls bounded by the earliest retry, attempt or request deadline.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import zmq

from node_engine.data_plane.client import DataPlaneError, Outputs, Timings, new_request_id, reply_result
from node_engine.data_plane.entry import EntryConnection
from treeline_common.clock import Clock, SystemClock
from treeline_common.logs import current_log_context
from treeline_common.request_context import stage_log_context
from treeline_common.tensor_wire import OVERLOADED, RETRYABLE, FramingError, pack, unpack

log = logging.getLogger(__name__)


class ResolvedEntry(NamedTuple):
    """What a resolver names: the entry, and optionally how to reach it securely."""

    endpoint: str
    stage_key: str
    key: str = ""  # hex caller key to sign requests with ("": the client's own ``key``)
    curve_server_key: str = ""  # the entry's CURVE public key: ``endpoint`` is its CURVE endpoint


# -> (entry endpoint, entry stage key[, caller key[, CURVE server key]]): a ResolvedEntry or a plain tuple
Resolver = Callable[[], tuple[str, ...]]


class InferenceError(RuntimeError):
    """A request of ``service`` ended without an answer: ``reason`` is the last failure seen."""

    def __init__(self, service: str, request_id: str, reason: str, attempts: int, code: str = "") -> None:
        super().__init__(f"service {service}: request {request_id} failed after {attempts} "
                         f"attempt(s): {reason}")
        self.service = service
        self.request_id = request_id
        self.reason = reason
        self.attempts = attempts
        self.code = code


@dataclass(frozen=True)
class RetryPolicy:
    """Timeouts of a :class:`ServiceClient` (seconds)."""

    deadline: float = 30.0  # a request's whole budget, all attempts together
    attempt_timeout: float = 5.0  # wait for one attempt's answer before retrying
    backoff_base: float = 0.05  # first retry delay; doubles per attempt
    backoff_cap: float = 1.0  # longest retry delay
    resolve_interval: float = 0.2  # at most one resolver call per this interval


def backoff_delay(attempt: int, base: float, cap: float) -> float:
    """Delay before the retry that follows ``attempt`` failed attempts: ``base * 2**(attempt-1)``, capped."""
    if attempt <= 0:
        return 0.0
    return min(cap, base * 2.0 ** min(attempt - 1, 30))


@dataclass
class Outcome:
    """How one request of :meth:`ServiceClient.infer_many` ended (``error`` None: answered)."""

    index: int
    request_id: str
    outputs: Outputs = field(default_factory=dict)
    timings: Timings = field(default_factory=dict)
    latency_s: float = 0.0  # first send to answer (or to giving up), retries included
    attempts: int = 0
    error: InferenceError | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class _Request:
    index: int
    request_id: str
    inputs: Mapping[str, np.ndarray]
    started: float
    deadline: float
    attempts: int = 0
    retry_at: float | None = 0.0  # None: an attempt is in flight; else when to send the next one
    sent_at: float = 0.0
    reason: str = "never sent"
    code: str = ""


class ServiceClient:
    """Sends requests to a service's current entry, retrying as the module docstring says."""

    def __init__(self, resolve: Resolver, *, service: str = "service", policy: RetryPolicy | None = None,
                 clock: Clock | None = None, context: zmq.Context[Any] | None = None, key: str = "") -> None:
        self.service = service
        self.policy = policy or RetryPolicy()
        self._resolve = resolve
        self._clock = clock or SystemClock()
        self._own_context = context is None
        self._ctx: zmq.Context[Any] = context or zmq.Context()
        self._entry: EntryConnection | None = None
        self._stage_key = ""
        self._default_key = bytes.fromhex(key) if key else b""
        self._key = self._default_key
        self._stale = True  # the entry must be (re-)resolved before the next send
        self._next_resolve = 0.0
        self._resolve_error = ""
        self._idle = threading.Event()  # never set: waits when there is no socket to poll
        self._closed = False

    def __enter__(self) -> ServiceClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the entry socket (and the context if this client made it); idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._entry is not None:
            self._entry.close()
            self._entry = None
        if self._own_context:
            self._ctx.term()

    @property
    def endpoint(self) -> str:
        """The entry endpoint in use ("" before the first resolve)."""
        return self._entry.endpoint if self._entry else ""

    # ------------------------------------------------------------------ API

    def infer(self, inputs: Mapping[str, np.ndarray],
              request_id: str | None = None) -> tuple[Outputs, Timings]:
        """One request: ``(outputs, timings)``, or InferenceError once it cannot be answered."""
        outcome = self.infer_many([inputs], max_in_flight=1,
                                  request_ids=[request_id] if request_id else None)[0]
        if outcome.error is not None:
            raise outcome.error
        return outcome.outputs, outcome.timings

    def infer_many(self, inputs_iter: Iterable[Mapping[str, np.ndarray]], max_in_flight: int = 8,
                   request_ids: Sequence[str] | None = None) -> list[Outcome]:
        """Pipelined requests, each retried on its own; one :class:`Outcome` per input, in input order.

        Up to ``max_in_flight`` requests are outstanding at once (waiting for a retry counts).
        ``request_ids`` (one per input, distinct) replaces the fresh ids.
        """
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be >= 1")
        if self._closed:
            raise RuntimeError("ServiceClient is closed")
        inputs = iter(inputs_iter)
        ids: Iterator[str] | None = iter(request_ids) if request_ids is not None else None
        active: dict[str, _Request] = {}
        done: dict[int, Outcome] = {}
        count = 0
        exhausted = False
        while True:
            now = self._clock.monotonic()
            while not exhausted and len(active) < max_in_flight:
                item = next(inputs, None)
                if item is None:
                    exhausted = True
                    break
                rid = (next(ids, None) if ids is not None else None) or new_request_id()
                active[rid] = _Request(count, rid, item, now, now + self.policy.deadline)
                count += 1
            if not active:
                return [done[i] for i in range(count)]
            self._maybe_resolve(now, active)
            self._send_due(now, active)
            self._expire(now, active, done)
            if active:
                self._wait(active, done)

    # ------------------------------------------------------------------ internals

    def _maybe_resolve(self, now: float, active: dict[str, _Request]) -> None:
        if not self._stale or now < self._next_resolve:
            return
        self._next_resolve = now + self.policy.resolve_interval
        try:
            endpoint, stage_key, key, curve_server_key = ResolvedEntry(*self._resolve())
            signing_key = bytes.fromhex(key) if key else self._default_key
        except Exception as exc:  # noqa: BLE001 - any resolver failure is retried until the deadline
            self._resolve_error = f"could not resolve the entry: {exc}"
            log.warning("service %s: %s", self.service, self._resolve_error)
            return
        self._stale, self._resolve_error = False, ""
        self._stage_key, self._key = stage_key, signing_key
        entry = self._entry
        if (entry is not None and entry.endpoint == endpoint and entry.curve_server_key == curve_server_key
                and entry.state != "down"):
            return
        if entry is not None:
            log.info("service %s: entry %s -> %s", self.service, entry.endpoint, endpoint)
            entry.close()
        self._entry = EntryConnection(self._ctx, endpoint, curve_server_key)
        for request in active.values():
            if request.retry_at is None:  # in flight on the old socket: send again on the new one now
                request.retry_at = now

    def _send_due(self, now: float, active: dict[str, _Request]) -> None:
        entry = self._entry
        if entry is None or (self._stale and not self._resolve_error):
            return  # wait for the resolve due shortly; a resolver that fails leaves the old entry in use
        for request in active.values():
            if request.retry_at is None or request.retry_at > now:
                continue
            frames = pack("request", request.request_id, request.inputs, stage=self._stage_key, key=self._key)
            if not entry.send(frames):
                self._failed(request, now, f"entry {entry.endpoint} is not accepting requests", OVERLOADED)
                continue
            request.attempts += 1
            request.sent_at, request.retry_at = now, None

    def _expire(self, now: float, active: dict[str, _Request], done: dict[int, Outcome]) -> None:
        for request in list(active.values()):
            if now >= request.deadline:
                reason = request.reason
                if self._resolve_error and request.attempts == 0:
                    reason = self._resolve_error
                error = InferenceError(self.service, request.request_id,
                                       f"no answer within {self.policy.deadline:.1f}s; last: {reason}",
                                       request.attempts, request.code)
                self._end(request, active, done, now, error=error)
            elif request.retry_at is None and now - request.sent_at >= self.policy.attempt_timeout:
                endpoint = self._entry.endpoint if self._entry else "?"
                reason = f"no answer from {endpoint} within {self.policy.attempt_timeout:.1f}s"
                self._failed(request, now, reason, "timeout")

    def _failed(self, request: _Request, now: float, reason: str, code: str) -> None:
        """A retryable failure: back off (re-resolving the entry unless it is only overloaded)."""
        request.reason, request.code = reason, code
        request.retry_at = now + backoff_delay(max(1, request.attempts), self.policy.backoff_base,
                                               self.policy.backoff_cap)
        if code != OVERLOADED:
            self._stale = True
        log.debug("service %s: request %s attempt %d failed: %s", self.service, request.request_id,
                  request.attempts, reason)

    def _wait(self, active: dict[str, _Request], done: dict[int, Outcome]) -> None:
        """Block until a message, a monitor event or the earliest retry/attempt/request deadline."""
        now = self._clock.monotonic()
        wake_at = min(min(r.deadline, _next_step(r, self.policy)) for r in active.values())
        if self._stale:
            wake_at = min(wake_at, max(self._next_resolve, now))
        timeout_ms = max(0, int((wake_at - now) * 1000) + 1)
        entry = self._entry
        if entry is None:
            self._idle.wait(timeout_ms / 1000.0)
            return
        event = entry.wait(timeout_ms)
        now = self._clock.monotonic()
        if event:  # the connection was refused or lost: every attempt in flight on it is lost
            for request in active.values():
                if request.retry_at is None:
                    self._failed(request, now, f"entry {entry.endpoint}: {event}", "unreachable")
            self._stale = True
        for frames in entry.received():
            self._on_message(frames, active, done, now)

    def _on_message(self, frames: list[Any], active: dict[str, _Request], done: dict[int, Outcome],
                    now: float) -> None:
        try:
            header, outputs = unpack(frames)
        except FramingError as exc:
            log.warning("service %s: dropping a malformed reply: %s", self.service, exc)
            return
        request = active.get(header.request_id)
        if request is None:
            log.debug("service %s: dropping a second or stale answer for %s", self.service, header.request_id)
            return
        try:
            out, timings = reply_result(header, outputs)
        except DataPlaneError as exc:
            if exc.code not in RETRYABLE:
                self._end(request, active, done, now, error=InferenceError(
                    self.service, request.request_id, str(exc), request.attempts, exc.code))
            elif request.retry_at is None:  # an error of an earlier attempt changes nothing
                self._failed(request, now, str(exc), exc.code)
            return
        self._end(request, active, done, now, outputs=out, timings=timings)

    def _end(self, request: _Request, active: dict[str, _Request], done: dict[int, Outcome], now: float, *,
             outputs: Outputs | None = None, timings: Timings | None = None,
             error: InferenceError | None = None) -> None:
        del active[request.request_id]
        if error is not None:  # the caller's own request id (a cluster's v2 HTTP request) wins over ours
            mine = "" if current_log_context().request_id else request.request_id
            with stage_log_context(mine, self._stage_key):
                log.warning("%s", error)
        done[request.index] = Outcome(request.index, request.request_id, outputs or {}, timings or {},
                                      now - request.started, request.attempts, error)


def _next_step(request: _Request, policy: RetryPolicy) -> float:
    """When ``request`` next needs attention: its retry time, or its attempt's timeout."""
    if request.retry_at is not None:
        return request.retry_at
    return request.sent_at + policy.attempt_timeout
