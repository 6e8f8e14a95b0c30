"""The tensor server: one zmq ROUTER serving every stage a node holds, plus forwarding.

Threading model (zmq sockets are not thread-safe, so exactly one thread touches them):

- the **poll thread** owns the ROUTER, one DEALER per downstream endpoint and the wake
  socket; it reads requests, hands them to workers, sends replies and forwards, and relays
  downstream replies back to the original caller (:mod:`.forwarding`);
- **worker threads** run partitions (onnxruntime releases the GIL; the emulated slowdown
  waits there, never in the poll thread) and hand results back through a queue plus a
  one-frame wake message on an inproc PUSH/PULL pair.

Requests in flight (computing or waiting for a downstream reply) are bounded by
``max_in_flight``; while the bound is reached the ROUTER is not read, so zmq's high-water
marks push back on the callers. A downstream that does not answer within
``forward_timeout`` yields an ``error`` reply. A next stage on this same node (same
endpoint) is run in-process: the arrays are handed over without touching a socket.

An emulated node charges its uplink before a forward leaves (``runner.link_delay_ms``):
the forward waits in a :class:`~.forwarding.LinkQueue` that the poll loop drains on time,
so the workers go on computing meanwhile; the wait shows up in the request's timings as
``"<stage_key>->link"``. Relay stages (no model) are passed on straight from the poll
thread when their next stage is remote, so they never queue behind a busy worker.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import zmq

from treeline_common.clock import Clock, SystemClock
from treeline_common.tensor_wire import FramingError, pack, payload_bytes, unpack

from node_engine.data_plane.forwarding import Forward, Forwarder, LinkQueue, link_timing_key
from node_engine.stages import StageRunner, StageTable

log = logging.getLogger(__name__)

MAX_LOCAL_HOPS = 64  # guards against a stage routed to itself in a loop
POLL_MS = 100  # longest the poll loop blocks (stop flag, deadlines); link due times cut it shorter


@dataclass
class _Job:
    envelope: list[Any]
    request_id: str
    stage: str
    inputs: dict[str, np.ndarray]
    timings: dict[str, float]


@dataclass
class _Result:
    """What a worker hands back: a reply/error for the caller, or a forward downstream."""

    job: _Job
    kind: str  # "reply" | "error" | "forward"
    outputs: dict[str, np.ndarray]
    stage: str = ""  # forward: the downstream stage key
    endpoint: str = ""  # forward: the downstream node's endpoint
    error: str = ""
    source: str = ""  # forward: the last stage run here (names the link timing)


@dataclass
class _Delayed:
    """A forward waiting out the emulated uplink, and when it started waiting."""

    forward: Forward
    queued_at: float


class DataPlaneServer:
    """Serves the stages in ``stages`` on ``tcp://host:port`` (port 0: a free one).

    The constructor does no I/O; :meth:`start` binds and starts the poll thread, after
    which :attr:`endpoint` is the address to advertise. :meth:`close` is idempotent.
    """

    def __init__(
        self,
        stages: StageTable,
        runner: StageRunner,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        max_in_flight: int = 64,
        workers: int = 2,
        forward_timeout: float = 30.0,
        clock: Clock | None = None,
        name: str = "node",
    ) -> None:
        self._stages = stages
        self._runner = runner
        self._host = host
        self._port = port
        self._max_in_flight = max_in_flight
        self._workers = workers
        self._forward_timeout = forward_timeout
        self._clock = clock or SystemClock()
        self._name = name
        self._ctx: zmq.Context[Any] | None = None
        self._router: zmq.Socket[Any] | None = None
        self._wake_pull: zmq.Socket[Any] | None = None
        self._wake_push: zmq.Socket[Any] | None = None
        self._wake_lock = threading.Lock()
        self._results: queue.SimpleQueue[_Result] = queue.SimpleQueue()
        self._pool: ThreadPoolExecutor | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._closed = False
        self.endpoint = ""

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> str:
        """Bind the ROUTER, start workers and the poll thread; return the endpoint."""
        self._ctx = zmq.Context()
        router = self._ctx.socket(zmq.ROUTER)
        router.setsockopt(zmq.LINGER, 0)
        router.setsockopt(zmq.ROUTER_MANDATORY, 1)  # an unroutable reply raises instead of vanishing
        if self._port:
            router.bind(f"tcp://{self._host}:{self._port}")
            port = self._port
        else:
            port = router.bind_to_random_port(f"tcp://{self._host}")
        self._router = router
        self.endpoint = f"tcp://{self._host}:{port}"
        wake_addr = f"inproc://treeline-wake-{id(self)}"
        self._wake_pull = self._ctx.socket(zmq.PULL)
        self._wake_pull.bind(wake_addr)
        self._wake_push = self._ctx.socket(zmq.PUSH)
        self._wake_push.setsockopt(zmq.LINGER, 0)
        self._wake_push.connect(wake_addr)
        self._pool = ThreadPoolExecutor(max_workers=self._workers, thread_name_prefix="stage-worker")
        self._thread = threading.Thread(target=self._loop, name="data-plane", daemon=True)
        self._thread.start()
        log.info("data plane serving on %s", self.endpoint)
        return self.endpoint

    def close(self, timeout: float = 2.0) -> None:
        """Stop the poll thread, drop in-flight work and close every socket."""
        if self._closed:
            return
        self._closed = True
        self._stopping.set()
        self._wake()
        if self._thread is not None:
            self._thread.join(timeout)
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        with self._wake_lock:
            if self._wake_push is not None:
                self._wake_push.close(0)
                self._wake_push = None
        if self._ctx is not None and (self._thread is None or not self._thread.is_alive()):
            self._ctx.term()  # every socket is closed by now, so this does not block
        log.info("data plane %s closed", self.endpoint)

    def _wake(self) -> None:
        with self._wake_lock:
            if self._wake_push is not None:
                try:
                    self._wake_push.send(b"", zmq.NOBLOCK)
                except zmq.ZMQError:
                    pass  # a wake is already queued; that one will do

    # ------------------------------------------------------------------ poll thread

    def _loop(self) -> None:
        assert self._router is not None and self._wake_pull is not None and self._ctx is not None
        router, wake = self._router, self._wake_pull
        poller = zmq.Poller()
        poller.register(wake, zmq.POLLIN)
        poller.register(router, zmq.POLLIN)
        forwarder = Forwarder(self._ctx, poller, name=self._name, timeout=self._forward_timeout)
        links: LinkQueue[_Delayed] = LinkQueue()
        reading = True
        in_flight = 0
        try:
            while not self._stopping.is_set():
                if reading and in_flight >= self._max_in_flight:
                    poller.modify(router, 0)
                    reading = False
                elif not reading and in_flight < self._max_in_flight:
                    poller.modify(router, zmq.POLLIN)
                    reading = True
                events = dict(poller.poll(links.poll_timeout_ms(self._clock.monotonic(), POLL_MS)))
                if wake in events:
                    while wake.poll(0):
                        wake.recv()
                    in_flight -= self._drain_results(router, forwarder, links)
                for dealer in forwarder.sockets():
                    if dealer in events:
                        in_flight -= forwarder.relay_back(dealer, self._sender(router))
                if router in events:
                    in_flight += self._accept(router, forwarder, links)
                in_flight -= self._send_due(router, forwarder, links)
                in_flight -= forwarder.expire(self._clock.monotonic(), self._sender(router))
        except zmq.ContextTerminated:
            pass
        except Exception:  # noqa: BLE001 - log and stop rather than die silently
            log.exception("data plane poll loop failed")
        finally:
            if links:
                log.info("dropping %d forward(s) still waiting on the emulated link", len(links))
            forwarder.close()
            router.close(0)
            wake.close(0)

    def _accept(self, router: zmq.Socket[Any], forwarder: Forwarder, links: LinkQueue[_Delayed]) -> int:
        """Read one request; return 1 if it was taken into flight, else 0."""
        frames = router.recv_multipart(copy=False)
        envelope, body = _split_envelope(frames)
        try:
            header, arrays = unpack(body)
        except FramingError as exc:
            log.warning("dropping malformed data-plane message: %s", exc)
            self._send(router, envelope, pack("error", "", {}, error=f"malformed message: {exc}"))
            return 0
        if header.kind != "request":
            self._send(router, envelope, pack("error", header.request_id, {}, stage=header.stage,
                                              error=f"expected a request, got {header.kind!r}"))
            return 0
        stage = self._stages.get(header.stage)
        if stage is None:
            self._send(router, envelope, pack("error", header.request_id, {}, stage=header.stage,
                                              error=self._unknown_stage(header.stage)))
            return 0
        job = _Job(envelope, header.request_id, header.stage, arrays, dict(header.timings))
        if stage.relay and (stage.next is None or stage.next.endpoint != self.endpoint):
            # nothing to compute: pass it on here rather than queue behind a busy worker
            return 1 - self._dispatch(router, forwarder, links, self._chain_or_error(job))
        assert self._pool is not None
        self._pool.submit(self._work, job)
        return 1

    def _drain_results(self, router: zmq.Socket[Any], forwarder: Forwarder,
                       links: LinkQueue[_Delayed]) -> int:
        """Dispatch what workers finished; return how many requests left flight."""
        done = 0
        while True:
            try:
                result = self._results.get_nowait()
            except queue.Empty:
                return done
            done += self._dispatch(router, forwarder, links, result)

    def _dispatch(self, router: zmq.Socket[Any], forwarder: Forwarder, links: LinkQueue[_Delayed],
                  result: _Result) -> int:
        """Answer the caller, or forward (after the emulated link, if any); 1 if the request left flight."""
        job = result.job
        if result.kind == "forward":
            forward = Forward(job.envelope, job.request_id, result.source, result.stage, result.endpoint,
                              result.outputs, job.timings)
            now = self._clock.monotonic()
            delay_ms = self._runner.link_delay_ms(payload_bytes(result.outputs))
            if delay_ms > 0.0:
                links.push(now + delay_ms / 1000.0, _Delayed(forward, now))
                return 0
            if forwarder.send(forward, now):
                return 0
            result = _Result(job, "error", {}, error=f"downstream {result.endpoint} is not accepting requests")
        frames = pack(result.kind, job.request_id, result.outputs, stage=job.stage,
                      timings=job.timings, error=result.error)
        self._send(router, job.envelope, frames)
        return 1

    def _send_due(self, router: zmq.Socket[Any], forwarder: Forwarder, links: LinkQueue[_Delayed]) -> int:
        """Send the forwards whose emulated transfer is over; return how many left flight (failed)."""
        if not links:
            return 0
        now = self._clock.monotonic()
        failed = 0
        for delayed in links.pop_due(now):
            forward = delayed.forward
            forward.timings[link_timing_key(forward.source)] = (now - delayed.queued_at) * 1000.0
            if forwarder.send(forward, now):
                continue
            message = f"downstream {forward.endpoint} is not accepting requests"
            self._send(router, forward.envelope,
                       pack("error", forward.request_id, {}, stage=forward.source, error=message))
            failed += 1
        return failed

    def _sender(self, router: zmq.Socket[Any]) -> Callable[[list[Any], list[Any]], None]:
        return lambda envelope, frames: self._send(router, envelope, frames)

    def _send(self, router: zmq.Socket[Any], envelope: list[Any], frames: list[Any]) -> None:
        try:
            router.send_multipart([*envelope, *frames], copy=False, flags=zmq.NOBLOCK)
        except zmq.ZMQError as exc:  # caller gone (EHOSTUNREACH) or its queue full
            log.warning("could not reply to a caller: %s", exc)

    def _unknown_stage(self, key: str) -> str:
        return f"unknown stage {key!r} on node {self._name}; serving {self._stages.keys()}"

    # ------------------------------------------------------------------ workers

    def _work(self, job: _Job) -> None:
        """Run the job's stage and any following stages on this node; queue the result."""
        self._results.put(self._chain_or_error(job))
        self._wake()

    def _chain_or_error(self, job: _Job) -> _Result:
        try:
            return self._run_chain(job)
        except Exception as exc:  # noqa: BLE001 - every failure becomes an error reply
            log.warning("stage %s failed: %s", job.stage, exc)
            return _Result(job, "error", {}, error=f"stage {job.stage} failed: {exc}")

    def _run_chain(self, job: _Job) -> _Result:
        key, inputs = job.stage, job.inputs
        for _ in range(MAX_LOCAL_HOPS):
            stage = self._stages.get(key)
            if stage is None:
                return _Result(job, "error", {}, error=self._unknown_stage(key))
            produced, compute_ms = self._runner.run(stage, inputs)
            job.timings[key] = compute_ms
            outputs = stage.select_outputs(inputs, produced)
            if stage.next is None:
                return _Result(job, "reply", outputs)
            if stage.next.endpoint != self.endpoint:
                return _Result(job, "forward", outputs, stage=stage.next.stage_key,
                               endpoint=stage.next.endpoint, source=key)
            key, inputs = stage.next.stage_key, outputs  # co-located: hand the arrays over in-process
        return _Result(job, "error", {}, error=f"stage {job.stage}: more than {MAX_LOCAL_HOPS} local hops")


def _split_envelope(frames: list[Any]) -> tuple[list[Any], list[Any]]:
    """ROUTER frames -> (routing envelope, message). A REQ caller adds an empty delimiter."""
    if len(frames) > 2 and len(frames[1].buffer) == 0:
        return frames[:2], frames[2:]
    return frames[:1], frames[1:]
