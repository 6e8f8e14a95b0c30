"""Who runs a request's stages: a worker thread, or the poll thread itself when that is cheaper.

:class:`Workers` is the server's compute side. The poll thread hands it each admitted job
(:meth:`Workers.run_or_submit`); the job either runs at once on the poll thread (the result
comes back from the call) or goes to one of ``workers`` threads of its own, which runs it and
hands the result back through a queue plus a one-frame wake on an inproc PUSH/PULL pair
(:class:`Wake`); the poll thread polls :attr:`Workers.wake` and takes what finished with
:meth:`Workers.finished`.

Why not a ``ThreadPoolExecutor``: a submit costs a Future, a work item and several locks, and
the wake used to be drained with one ``poll(0)`` (a new Poller) per frame. Plain threads on a
:class:`queue.SimpleQueue` and a drain on :func:`~.sockets.readable` measured 10-14 us per round trip poll
thread -> worker -> poll thread against 25 us (2-core host, under load).

**Inline runs** (:class:`InlinePolicy`): handing a job to a worker and its result back costs
two thread wake-ups, 50-100 us on a loaded host, more than a stage that only passes a tensor
on needs. A stage whose last :data:`INLINE_STREAK` runs each took under
:data:`INLINE_MAX_MS` (timed around the whole run, on whichever thread) runs on the poll
thread; one slower run sends it back to the workers at once. So the poll thread is never
held up by more than one slow run of a stage that turned slow, and a real partition (ms
of compute) or an emulated device (its slowdown is part of the run) always runs on a
worker. Relay stages (no model) whose next stage is on another node always run inline.

Threading model: :meth:`run_or_submit`, :meth:`finished` and :meth:`close_pull` are the poll
thread's; worker threads only run jobs, put results on the queue and ring; :meth:`close`
may be called from any thread. Jobs still queued when :meth:`close` runs are dropped (the
server answers every request in flight itself when it closes).
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

import zmq

from node_engine.data_plane.chain import Job, Result
from node_engine.data_plane.sockets import readable
from treeline_common.clock import Clock

log = logging.getLogger(__name__)

INLINE_MAX_MS = 0.2  # a run this short costs less than the hand-off to a worker and back
INLINE_STREAK = 8  # consecutive short runs before a stage runs on the poll thread
TRACKED_STAGES = 256  # bound on the stages whose run times are tracked (forgotten all at once beyond)


class Wake:
    """A one-frame inproc PUSH/PULL pair: workers ring (any thread, under a lock), the poll thread drains."""

    def __init__(self, ctx: zmq.Context[Any], name: str) -> None:
        address = f"inproc://treeline-wake-{name}"
        self.pull = ctx.socket(zmq.PULL)
        self.pull.bind(address)
        self._push: zmq.Socket[Any] | None = ctx.socket(zmq.PUSH)
        self._push.setsockopt(zmq.LINGER, 0)
        self._push.connect(address)
        self._lock = threading.Lock()

    def ring(self) -> None:
        """Wake the poll thread (a no-op once :meth:`close_push` ran)."""
        with self._lock:
            if self._push is not None:
                with contextlib.suppress(zmq.ZMQError):  # queue full: earlier wakes are pending anyway
                    self._push.send(b"", zmq.NOBLOCK)

    def drain(self) -> None:
        """Take every queued wake (poll thread)."""
        while readable(self.pull):
            self.pull.recv()

    def close_push(self) -> None:
        """Close the ringing side (idempotent); workers still running then ring nothing."""
        with self._lock:
            if self._push is not None:
                self._push.close(0)
                self._push = None


class InlinePolicy:
    """Which stages run on the poll thread (see the module docstring). Poll thread only; no locks."""

    def __init__(self, max_ms: float = INLINE_MAX_MS, streak: int = INLINE_STREAK) -> None:
        self._max_ms = max_ms
        self._streak = streak
        self._short: dict[str, int] = {}  # stage key -> consecutive runs under max_ms (capped at streak)

    def inline(self, stage_key: str) -> bool:
        """Whether a job addressed to ``stage_key`` should run on the poll thread now."""
        return self._short.get(stage_key, 0) >= self._streak

    def record(self, stage_key: str, run_ms: float) -> None:
        """One run of a job addressed to ``stage_key`` took ``run_ms`` (wall ms, any thread)."""
        if run_ms >= self._max_ms:
            self._short.pop(stage_key, None)
            return
        if stage_key not in self._short and len(self._short) >= TRACKED_STAGES:
            self._short.clear()  # old generations' keys: start over rather than grow
        self._short[stage_key] = min(self._streak, self._short.get(stage_key, 0) + 1)


class Workers:
    """``workers`` threads running ``run(job)`` (which never raises), plus the inline policy."""

    def __init__(self, ctx: zmq.Context[Any], name: str, workers: int, run: Callable[[Job], Result],
                 clock: Clock, policy: InlinePolicy | None = None) -> None:
        self._run = run
        self._clock = clock
        self._policy = policy or InlinePolicy()
        self._jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._results: queue.SimpleQueue[tuple[Result, float]] = queue.SimpleQueue()
        self._wake = Wake(ctx, name)
        self.wake = self._wake.pull  # the socket the poll thread polls
        self._stopping = threading.Event()
        self._threads = [threading.Thread(target=self._serve, name=f"stage-worker_{i}", daemon=True)
                         for i in range(max(1, workers))]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def run_or_submit(self, job: Job, *, inline: bool = False) -> Result | None:
        """Run ``job`` here and return its result (``inline``, or a stage the policy says is
        quick), or hand it to a worker and return None (its result comes from :meth:`finished`)."""
        if not (inline or self._policy.inline(job.stage)):
            self._jobs.put(job)
            return None
        result, run_ms = self._timed(job)
        self._policy.record(job.stage, run_ms)
        return result

    def finished(self) -> list[Result]:
        """Every result the workers handed back since the last call (poll thread, on a wake)."""
        self._wake.drain()
        done: list[Result] = []
        while True:
            try:
                result, run_ms = self._results.get_nowait()
            except queue.Empty:
                return done
            self._policy.record(result.job.stage, run_ms)
            done.append(result)

    def close(self) -> None:
        """Stop the workers (any thread; idempotent): queued jobs are dropped, running ones ring nothing.

        Rings the poll thread once first, so a poll loop told to stop wakes up to see it.
        """
        if self._stopping.is_set():
            return
        self._stopping.set()
        self._wake.ring()
        self._wake.close_push()
        for _ in self._threads:
            self._jobs.put(None)

    def close_pull(self) -> None:
        """Close the poll thread's end of the wake pair (poll thread, on its way out)."""
        self.wake.close(0)

    def _timed(self, job: Job) -> tuple[Result, float]:
        started = self._clock.monotonic()
        result = self._run(job)
        return result, (self._clock.monotonic() - started) * 1000.0

    def _serve(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None or self._stopping.is_set():
                return
            outcome = self._timed(job)
            if self._stopping.is_set():
                return
            self._results.put(outcome)
            self._wake.ring()
