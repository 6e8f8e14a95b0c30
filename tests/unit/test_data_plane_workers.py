"""Who runs a stage: the inline policy (pure) and a real node moving a stage between threads.

A stage that keeps finishing in microseconds runs on the poll thread (the hand-off to a
worker and back costs more); one slow run sends it back to the workers at once, so a stage
that turns slow holds the poll thread up for one run only. Also: the data plane's sockets
get the enlarged kernel buffers, and ``readable`` tells a waiting message from none.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest
import zmq
from treeline_test_helpers import start_data_plane_server

from node_engine.data_plane.client import TensorClient
from node_engine.data_plane.sockets import COPY_THRESHOLD_BYTES, SOCKET_BUFFER_BYTES, readable, tune_buffers
from node_engine.data_plane.workers import INLINE_MAX_MS, INLINE_STREAK, TRACKED_STAGES, InlinePolicy
from node_engine.stages import LoadedStage, StageTable

KEY = "w/1/0"


@pytest.mark.parametrize(("runs_ms", "inline"), [
    ([0.01] * (INLINE_STREAK - 1), False),  # not yet a streak
    ([0.01] * INLINE_STREAK, True),
    ([0.01] * INLINE_STREAK + [INLINE_MAX_MS], False),  # one slow run ends it at once
    ([0.01] * INLINE_STREAK + [5.0] + [0.01] * (INLINE_STREAK - 1), False),  # and it must be earned again
    ([0.01] * 3 + [1.0] + [0.01] * INLINE_STREAK, True),
])
def test_inline_policy_needs_a_streak_of_short_runs(runs_ms: list[float], inline: bool) -> None:
    policy = InlinePolicy()
    for ms in runs_ms:
        policy.record(KEY, ms)
    assert policy.inline(KEY) is inline
    assert not policy.inline("other/1/0")


def test_inline_policy_tracks_a_bounded_number_of_stages() -> None:
    policy = InlinePolicy(streak=1)
    for i in range(TRACKED_STAGES):
        policy.record(f"s/{i}/0", 0.01)
    assert policy.inline("s/0/0")
    policy.record("new/1/0", 0.01)  # one more stage: the old ones are forgotten, not kept forever
    assert policy.inline("new/1/0") and not policy.inline("s/0/0")


class _Switchable:
    """Returns its input; records the thread each run is on; slow (``slow_s``) while ``slow`` is set."""

    input_names: tuple[str, ...] = ("x",)
    output_names: tuple[str, ...] = ("x",)

    def __init__(self, slow_s: float) -> None:
        self.threads: list[str] = []
        self.slow = threading.Event()
        self._slow_s = slow_s
        self._never = threading.Event()

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.threads.append(threading.current_thread().name)
        if self.slow.is_set():
            self._never.wait(self._slow_s)  # an emulated long compute
        return {"x": inputs["x"]}

    def close(self) -> None:
        pass


def test_a_quick_stage_moves_to_the_poll_thread_and_back_after_one_slow_run(servers: list[Any]) -> None:
    session = _Switchable(slow_s=20 * INLINE_MAX_MS / 1000.0)
    table = StageTable()
    table.put(LoadedStage(KEY, "w", 0, "x", 1, session, None))
    server = start_data_plane_server(servers, table, "switch")
    x = np.arange(16, dtype=np.float32)
    with TensorClient(server.endpoint) as client:
        for _ in range(200):  # a preempted run (loaded host) restarts the streak: go on until it is earned
            client.infer(KEY, {"x": x}, timeout=5.0)
            if session.threads[-1] == "data-plane":
                break
        assert session.threads[-1] == "data-plane"  # quick runs earned the poll thread
        assert all(name.startswith("stage-worker") for name in session.threads[:INLINE_STREAK])
        session.slow.set()
        session.threads.clear()
        for _ in range(3):
            outputs, _ = client.infer(KEY, {"x": x}, timeout=5.0)
    np.testing.assert_array_equal(outputs["x"], x)
    # every run is slow now: whichever thread ran the first, the next ones are back on workers
    assert all(name.startswith("stage-worker") for name in session.threads[1:]), session.threads


def test_data_plane_sockets_get_large_kernel_buffers_and_readable_tells_waiting_input() -> None:
    ctx = zmq.Context()
    pull, push = ctx.socket(zmq.PULL), ctx.socket(zmq.PUSH)
    try:
        tune_buffers(pull)
        assert pull.getsockopt(zmq.RCVBUF) == SOCKET_BUFFER_BYTES
        assert pull.getsockopt(zmq.SNDBUF) == SOCKET_BUFFER_BYTES
        assert pull.copy_threshold == COPY_THRESHOLD_BYTES
        pull.bind("inproc://test-readable")
        push.connect("inproc://test-readable")
        assert not readable(pull)
        push.send(b"x")
        assert pull.poll(5000)
        assert readable(pull)
        pull.recv()
        assert not readable(pull)
    finally:
        push.close(0)
        pull.close(0)
        ctx.term()
