"""No request lost when a node is killed (SIGKILL, no goodbye) in the middle of a stream.

Nodes are real processes on loopback serving an echo stage through a real DataPlaneServer;
each prints ``RUN`` per request it computes, which is how the test knows the stream is
under way before it kills one. The resolver stands in for the root API: it names the
killed node's placement until the kill, the surviving one after.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
from treeline_test_helpers import REPO
from treeline_test_helpers import start_data_plane_server as _server

from node_engine.data_plane.server import DataPlaneServer
from node_engine.data_plane.service_client import RetryPolicy, ServiceClient
from node_engine.stages import LoadedStage, StageTable
from treeline_common.messages import NextStage, stage_key

FIRST, LAST = stage_key("svc", 0, 1), stage_key("svc", 1, 1)
# attempts that would time out long after the test's own bound: failover must come from the
# connection (entry killed) or the node's fail-fast error (downstream killed), not from timeouts
POLICY = RetryPolicy(deadline=20.0, attempt_timeout=15.0, backoff_base=0.02, backoff_cap=0.2,
                     resolve_interval=0.05)

NODE = r"""
import sys, threading, time
import numpy as np
from node_engine.data_plane.server import DataPlaneServer
from node_engine.stages import LoadedStage, StageRunner, StageTable

LOCK = threading.Lock()  # two workers print: one whole line at a time

class Echo:
    input_names = ()
    output_names = ()
    def run(self, inputs):
        with LOCK:
            print("RUN", flush=True)
        time.sleep(0.005)  # the stage's compute
        return {k: np.array(v) for k, v in inputs.items()}
    def close(self):
        pass

key = sys.argv[1]
deployment, generation, index = key.split("/")
table = StageTable()
table.put(LoadedStage(key, deployment, int(index), "x", int(generation), Echo(), None))
server = DataPlaneServer(table, StageRunner(), name=sys.argv[2])
print("READY", server.start(), flush=True)
sys.stdin.read()  # serve until the test closes stdin (or kills us)
server.close()
"""


class NodeProcess:
    """One node process; counts the ``RUN`` lines it prints."""

    def __init__(self, key: str, name: str) -> None:
        self.process = subprocess.Popen([sys.executable, "-c", NODE, key, name], cwd=REPO, text=True,
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert self.process.stdout is not None
        ready = self.process.stdout.readline().split()
        assert ready[:1] == ["READY"], f"node {name} did not start: {ready}"
        self.endpoint = ready[1]
        self.name = name
        self.runs = 0
        self.reached = threading.Event()
        self.target = 0
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if line.startswith("RUN"):
                self.runs += 1
                if self.target and self.runs >= self.target:
                    self.reached.set()

    def kill(self) -> None:
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)


@pytest.fixture
def nodes() -> Iterator[list[NodeProcess]]:
    made: list[NodeProcess] = []
    yield made
    for node in made:
        node.stop()


class Switch:
    def __init__(self, before: tuple[str, str], after: tuple[str, str]) -> None:
        self.answer, self.after, self.calls = before, after, 0

    def __call__(self) -> tuple[str, str]:
        self.calls += 1
        return self.answer

    def flip(self) -> None:
        self.answer = self.after


def _kill_after(node: NodeProcess, runs: int, resolver: Switch) -> threading.Thread:
    """Kill ``node`` once it has computed ``runs`` requests; the service is then re-placed."""
    node.target = runs

    def kill() -> None:
        assert node.reached.wait(20.0), "the stream never reached the node"
        node.kill()
        resolver.flip()

    thread = threading.Thread(target=kill)
    thread.start()
    return thread


def _wait_until(predicate: Callable[[], bool], timeout: float = 10.0,
                what: Callable[[], str] = lambda: "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"condition not met in time {what()}"
        time.sleep(0.01)  # polling with a deadline: the counts come from reader threads


def _all_computed(doomed: NodeProcess, survivor: NodeProcess, n: int) -> None:
    """Every answered request was computed by one of them (their RUN lines may still be in the pipes)."""
    _wait_until(lambda: doomed.runs + survivor.runs >= n, what=lambda: f"{doomed.runs}+{survivor.runs} runs")
    assert survivor.runs > 0


def _stream(resolver: Switch, n: int) -> tuple[list[Any], float]:
    inputs = [{"x": np.full(4, i, np.float32)} for i in range(n)]
    started = time.monotonic()
    with ServiceClient(resolver, service="svc", policy=POLICY) as client:
        outcomes = client.infer_many(inputs, max_in_flight=4)
    elapsed = time.monotonic() - started
    assert all(o.ok for o in outcomes), [str(o.error) for o in outcomes if not o.ok]
    assert [float(o.outputs["x"][0]) for o in outcomes] == [float(i) for i in range(n)]
    assert len({o.request_id for o in outcomes}) == n
    return outcomes, elapsed


def test_killing_the_entry_node_mid_stream_loses_no_request(nodes: list[NodeProcess]) -> None:
    doomed, survivor = NodeProcess(FIRST, "doomed"), NodeProcess(FIRST, "survivor")
    nodes += [doomed, survivor]
    resolver = Switch((doomed.endpoint, FIRST), (survivor.endpoint, FIRST))
    killer = _kill_after(doomed, 15, resolver)
    outcomes, elapsed = _stream(resolver, 60)
    killer.join(20.0)
    assert doomed.process.returncode == -signal.SIGKILL
    _all_computed(doomed, survivor, 60)
    assert any(o.attempts > 1 for o in outcomes)
    assert elapsed < 10.0  # the lost connection was noticed, not waited out (attempts time out at 15 s)


def test_killing_a_downstream_node_mid_stream_loses_no_request(nodes: list[NodeProcess],
                                                               servers: list[DataPlaneServer]) -> None:
    """Entry (in this process) -> last stage (a killed process): the entry answers the requests
    it had forwarded with an error at once, and the client retries them on the new placement."""
    doomed, survivor = NodeProcess(LAST, "doomed"), NodeProcess(LAST, "survivor")
    nodes += [doomed, survivor]
    entries = []
    for name, last in (("entry-1", doomed), ("entry-2", survivor)):
        table = StageTable()
        table.put(LoadedStage(FIRST, "svc", 0, "", 1, _Identity(), NextStage(last.name, last.endpoint, LAST)))
        entries.append(_server(servers, table, name))
    resolver = Switch((entries[0].endpoint, FIRST), (entries[1].endpoint, FIRST))
    killer = _kill_after(doomed, 15, resolver)
    outcomes, elapsed = _stream(resolver, 60)
    killer.join(20.0)
    assert doomed.process.returncode == -signal.SIGKILL
    _all_computed(doomed, survivor, 60)
    assert any(o.attempts > 1 for o in outcomes)
    assert elapsed < 10.0  # fail fast at the entry, not its 10 s forward timeout


class _Identity:
    input_names: tuple[str, ...] = ()
    output_names: tuple[str, ...] = ()

    def run(self, inputs: Any) -> dict[str, Any]:
        return dict(inputs)

    def close(self) -> None:
        pass
