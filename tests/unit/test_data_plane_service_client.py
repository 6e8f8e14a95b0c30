"""ServiceClient over real zmq on loopback: a caller addresses a service, never a node.

The resolver is a plain function the test controls, standing in for the root API. Entry
"nodes" are real DataPlaneServers with a Python echo session, or a raw ROUTER where a test
needs an entry that swallows requests and dies without a word.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest
import zmq
from treeline_test_helpers import start_data_plane_server as _server

from node_engine.data_plane.server import DataPlaneServer
from node_engine.data_plane.service_client import (
    InferenceError,
    RetryPolicy,
    ServiceClient,
    backoff_delay,
)
from node_engine.stages import LoadedStage, StageTable
from treeline_cli import inference
from treeline_common.messages import stage_key
from treeline_common.netutil import free_port
from treeline_common.tensor_wire import STAGE_FAILED

KEY = stage_key("svc", 0, 1)
FAST = RetryPolicy(deadline=10.0, attempt_timeout=2.0, backoff_base=0.01, backoff_cap=0.1,
                   resolve_interval=0.02)


class Echo:
    """Returns its inputs; counts runs; fires ``after`` once ``after_runs`` runs have started."""

    input_names: tuple[str, ...] = ()
    output_names: tuple[str, ...] = ()

    def __init__(self, after_runs: int = 0, fail: bool = False) -> None:
        self.runs = 0
        self.after_runs = after_runs
        self.after = threading.Event()
        self.fail = fail
        self.lock = threading.Lock()

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        with self.lock:
            self.runs += 1
            if self.after_runs and self.runs >= self.after_runs:
                self.after.set()
        if self.fail:
            raise ValueError("bad inputs")
        return {name: np.array(value) for name, value in inputs.items()}

    def close(self) -> None:
        pass


def _entry(servers: list[DataPlaneServer], name: str, session: Echo, key: str = KEY) -> DataPlaneServer:
    table = StageTable()
    deployment, generation, index = key.split("/")
    table.put(LoadedStage(key, deployment, int(index), "x", int(generation), session, None))
    return _server(servers, table, name, workers=2)


class Switch:
    """A resolver whose answer the test flips; counts calls."""

    def __init__(self, *answers: tuple[str, str]) -> None:
        self.answers = list(answers)
        self.calls = 0
        self.lock = threading.Lock()

    def __call__(self) -> tuple[str, str]:
        with self.lock:
            self.calls += 1
            return self.answers[0]

    def flip(self) -> None:
        with self.lock:
            self.answers.pop(0)


def _inputs(n: int) -> list[dict[str, np.ndarray]]:
    return [{"x": np.full(3, i, np.float32)} for i in range(n)]


def _assert_each_answered_once(outcomes: list[Any], n: int) -> None:
    assert len(outcomes) == n
    assert all(o.ok for o in outcomes), [str(o.error) for o in outcomes if not o.ok]
    assert [float(o.outputs["x"][0]) for o in outcomes] == [float(i) for i in range(n)]
    assert len({o.request_id for o in outcomes}) == n


def test_entry_closed_mid_stream_fails_over_to_the_new_entry(servers: list[DataPlaneServer]) -> None:
    old_session, new_session = Echo(after_runs=10), Echo()
    old = _entry(servers, "old", old_session)
    new = _entry(servers, "new", new_session)
    resolver = Switch((old.endpoint, KEY), (new.endpoint, KEY))

    def kill_old() -> None:
        assert old_session.after.wait(10.0)
        resolver.flip()  # the orchestrator has re-placed the service
        old.close()

    killer = threading.Thread(target=kill_old)
    killer.start()
    with ServiceClient(resolver, service="svc", policy=FAST) as client:
        outcomes = client.infer_many(_inputs(40), max_in_flight=4)
    killer.join(10.0)
    _assert_each_answered_once(outcomes, 40)
    assert old_session.runs >= 10 and new_session.runs >= 1
    assert old_session.runs + new_session.runs >= 40
    assert resolver.calls >= 2


def test_entry_that_dies_without_a_word_fails_over(servers: list[DataPlaneServer]) -> None:
    """The first entry takes requests and never answers, then its connection drops (a killed
    node): the client notices on its socket monitor, not after the attempt timeout."""
    ctx: zmq.Context[Any] = zmq.Context.instance()
    dead = ctx.socket(zmq.ROUTER)
    dead.setsockopt(zmq.LINGER, 0)
    dead_endpoint = f"tcp://127.0.0.1:{dead.bind_to_random_port('tcp://127.0.0.1')}"
    new = _entry(servers, "new", Echo())
    resolver = Switch((dead_endpoint, KEY), (new.endpoint, KEY))

    def swallow_then_die() -> None:
        assert dead.poll(10_000)
        resolver.flip()
        dead.close(0)

    killer = threading.Thread(target=swallow_then_die)
    killer.start()
    slow_attempts = RetryPolicy(deadline=10.0, attempt_timeout=8.0, backoff_base=0.01, backoff_cap=0.1,
                                resolve_interval=0.02)
    started = time.monotonic()
    with ServiceClient(resolver, service="svc", policy=slow_attempts) as client:
        outcomes = client.infer_many(_inputs(6), max_in_flight=3)
    killer.join(10.0)
    _assert_each_answered_once(outcomes, 6)
    assert time.monotonic() - started < 4.0  # well before any attempt timed out
    assert max(o.attempts for o in outcomes) >= 2


def test_deadline_exhausted_gives_one_clear_error() -> None:
    nowhere = f"tcp://127.0.0.1:{free_port()}"
    policy = RetryPolicy(deadline=0.6, attempt_timeout=0.2, backoff_base=0.01, backoff_cap=0.1)
    started = time.monotonic()
    with ServiceClient(lambda: (nowhere, KEY), service="svc-x", policy=policy) as client, \
            pytest.raises(InferenceError) as caught:
        client.infer({"x": np.ones(2, np.float32)}, request_id="r-1")
    elapsed = time.monotonic() - started
    assert 0.6 <= elapsed < 2.0
    error = caught.value
    assert isinstance(error, RuntimeError) and error.service == "svc-x" and error.request_id == "r-1"
    assert error.attempts >= 2
    assert str(error).startswith("service svc-x: request r-1 failed after")
    assert "no answer within 0.6s" in str(error) and nowhere in error.reason


def test_a_resolver_that_keeps_failing_ends_in_an_error_naming_it() -> None:
    def broken() -> tuple[str, str]:
        raise ConnectionError("root is down")

    policy = RetryPolicy(deadline=0.3, resolve_interval=0.05)
    with ServiceClient(broken, service="svc", policy=policy) as client:
        outcomes = client.infer_many(_inputs(2), max_in_flight=2)
    assert [o.ok for o in outcomes] == [False, False]
    assert all("could not resolve the entry: root is down" in str(o.error) for o in outcomes)
    assert all(o.attempts == 0 for o in outcomes)


def test_a_stage_failure_is_not_retried(servers: list[DataPlaneServer]) -> None:
    session = Echo(fail=True)
    entry = _entry(servers, "n", session)
    with ServiceClient(lambda: (entry.endpoint, KEY), policy=FAST) as client, \
            pytest.raises(InferenceError, match="bad inputs") as caught:
        client.infer({"x": np.ones(2, np.float32)})
    assert caught.value.attempts == 1 and caught.value.code == STAGE_FAILED and session.runs == 1


def test_an_unknown_stage_makes_the_client_resolve_again(servers: list[DataPlaneServer]) -> None:
    entry = _entry(servers, "n", Echo())
    resolver = Switch((entry.endpoint, stage_key("svc", 0, 0)), (entry.endpoint, KEY))  # old generation first
    original = resolver.__call__

    def resolve_then_move() -> tuple[str, str]:
        answer = original()
        if resolver.calls == 1:
            resolver.flip()  # the next resolve names the new generation's stage
        return answer

    with ServiceClient(resolve_then_move, policy=FAST) as client:
        outputs, _ = client.infer({"x": np.full(2, 4.0, np.float32)})
    assert outputs["x"].tolist() == [4.0, 4.0] and resolver.calls == 2


@pytest.mark.parametrize("attempt, expected", [(0, 0.0), (1, 0.05), (2, 0.1), (3, 0.2), (6, 1.0), (100, 1.0)])
def test_backoff_doubles_up_to_its_cap(attempt: int, expected: float) -> None:
    assert backoff_delay(attempt, 0.05, 1.0) == pytest.approx(expected)


# ---------------------------------------------------------------- treeline infer's measurement


PLACEMENT_INPUT = {"name": "x", "shape": [1, 4], "dtype": "float32"}


def test_run_requests_follows_the_resolver_and_counts_failures(servers: list[DataPlaneServer]) -> None:
    entry = _entry(servers, "n", Echo())
    nowhere = f"tcp://127.0.0.1:{free_port()}"
    stale = {"entry": {"endpoint": nowhere, "stage_key": KEY}, "input": PLACEMENT_INPUT}
    report = inference.run_requests(stale, 12, in_flight=3, resolver=lambda: (entry.endpoint, KEY))
    assert report.requests == 12 and report.failed == 0 and report.errors == {}
    assert report.stage_ms.keys() == {KEY}
    failing = inference.run_requests(stale, 3, in_flight=3, timeout=0.3)
    assert failing.requests == 0 and failing.failed == 3
    assert sum(failing.errors.values()) == 3 and all("no answer within 0.3s" in r for r in failing.errors)
    merged = inference.merge([report, failing])
    assert merged.requests == 12 and merged.failed == 3


def test_run_requests_stops_when_a_whole_chunk_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    """A service that is gone (its root unreachable) ends the run after one chunk, not after n
    deadlines; what was not sent is counted as failed, with the reason."""
    monkeypatch.setattr(inference, "CHUNK", 20)
    calls: list[int] = []

    def gone() -> tuple[str, str]:
        calls.append(1)
        raise RuntimeError("cannot reach the root")

    stale = {"entry": {"endpoint": "tcp://127.0.0.1:1", "stage_key": KEY}, "input": PLACEMENT_INPUT}
    report = inference.run_requests(stale, 100, in_flight=2, timeout=0.2, resolver=gone)
    assert report.requests == 0 and report.failed == 100
    assert report.errors["not sent: every request of the chunk before failed"] == 80
    assert calls  # it did try


def test_service_resolver_reads_the_entry_from_the_root(monkeypatch: pytest.MonkeyPatch) -> None:
    documents: list[dict[str, Any]] = [{"status": "DEPLOYING", "placement": None},
                 {"status": "RUNNING", "placement": {"entry": {"endpoint": "tcp://h:1", "stage_key": KEY}}}]
    asked: list[tuple[str, str]] = []

    class FakeRoot:
        def __init__(self, url: str) -> None:
            self.url = url

        def service(self, service_id: str) -> dict[str, Any]:
            asked.append((self.url, service_id))
            return documents.pop(0)

    monkeypatch.setattr(inference, "RootClient", FakeRoot)
    resolve = inference.service_resolver("http://root", "s-1")
    with pytest.raises(RuntimeError, match="service s-1 has no placement entry"):
        resolve()
    assert resolve() == ("tcp://h:1", KEY, "")
    assert asked == [("http://root", "s-1"), ("http://root", "s-1")]
