"""Emulated links and relay stages in the data plane, over real zmq sockets on loopback.

Sessions here are tiny Python stand-ins (identity, echo, gated) so the tests measure the
link emulation and the threading, not onnxruntime. Link delays are real waits (the point
is that they overlap), so timing assertions use generous tolerances.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pytest
from treeline_test_helpers import start_data_plane_server as _server

from node_engine.commands import CommandHandler
from node_engine.data_plane.client import TensorClient
from node_engine.data_plane.server import DataPlaneServer
from node_engine.emulation import EmulatedLink
from node_engine.stages import RELAY_SESSION, LoadedStage, StageTable
from treeline_common.clock import SystemClock
from treeline_common.messages import DeleteCommand, DeployCommand, NextStage, StageState


class Echo:
    """Returns what it gets (a last stage that lets the caller see what arrived)."""

    input_names: tuple[str, ...] = ()
    output_names: tuple[str, ...] = ()

    def __init__(self) -> None:
        self.started: list[float] = []
        self.lock = threading.Lock()

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        with self.lock:
            self.started.append(time.monotonic())
        return dict(inputs)

    def close(self) -> None:
        pass


def _pair(servers: list[DataPlaneServer], link: EmulatedLink | None, first: LoadedStage | None = None,
          workers: int = 1) -> tuple[DataPlaneServer, Echo]:
    """Node a (stage ``d/0``, with ``link``) forwarding to node b (echo stage ``d/1``)."""
    table_a, table_b = StageTable(), StageTable()
    server_b = _server(servers, table_b, "b")
    sink = Echo()
    table_b.put(LoadedStage("d/1", "d", 1, "x", 1, sink, None))
    server_a = _server(servers, table_a, "a", link, workers=workers)
    nxt = NextStage("b", server_b.endpoint, "d/1")
    table_a.put(first.with_route(nxt, 1) if first else LoadedStage("d/0", "d", 0, "x", 1, Echo(), nxt))
    return server_a, sink


def test_forwarded_request_reports_its_link_time(servers: list[DataPlaneServer]) -> None:
    link = EmulatedLink(uplink_mbps=1.0, rtt_ms=50.0)  # 125 bytes/ms
    server_a, _ = _pair(servers, link)
    x = np.arange(3125, dtype=np.float32)  # 12,500 bytes -> 100 ms + 50 ms rtt
    expected_ms = link.delay_ms(x.nbytes)
    assert expected_ms == pytest.approx(150.0)
    with TensorClient(server_a.endpoint) as client:
        started = time.monotonic()
        outputs, timings = client.infer("d/0", {"x": x})
        latency_ms = (time.monotonic() - started) * 1000.0
    np.testing.assert_array_equal(outputs["x"], x)
    assert set(timings) == {"d/0", "d/0->link", "d/1"}
    assert expected_ms <= timings["d/0->link"] < expected_ms + 100.0
    assert latency_ms >= expected_ms
    assert timings["d/0"] < expected_ms  # compute and transfer are reported apart


def test_native_node_forwards_without_a_link_delay(servers: list[DataPlaneServer]) -> None:
    server_a, _ = _pair(servers, None)
    with TensorClient(server_a.endpoint) as client:
        _, timings = client.infer("d/0", {"x": np.ones(100_000, np.float32)})
    assert set(timings) == {"d/0", "d/1"}


def test_pending_link_delay_does_not_hold_the_compute_worker(servers: list[DataPlaneServer]) -> None:
    """One worker, two requests: their transfers overlap (max, not sum) and the second
    request computes while the first one's transfer is still pending."""
    link = EmulatedLink(uplink_mbps=1.0, rtt_ms=400.0)
    first = LoadedStage("d/0", "d", 0, "x", 1, Echo(), None)
    server_a, _ = _pair(servers, link, first=first, workers=1)
    small = {"x": np.zeros(1, np.float32)}  # ~400 ms
    big = {"x": np.zeros(6250, np.float32)}  # 25,000 bytes: 400 + 200 = 600 ms
    delays = [link.delay_ms(4), link.delay_ms(25_000)]
    with TensorClient(server_a.endpoint) as client:
        started = time.monotonic()
        results = client.infer_many("d/0", [small, big], max_in_flight=2)
        elapsed_ms = (time.monotonic() - started) * 1000.0
    assert elapsed_ms >= max(delays)
    assert elapsed_ms < sum(delays) - 100.0  # ~600 ms, not ~1000 ms
    for (_, timings, latency_s), delay in zip(results, delays, strict=True):
        assert delay <= timings["d/0->link"] < delay + 150.0
        assert latency_s * 1000.0 >= delay
    computed = first.session.started  # type: ignore[attr-defined]
    assert len(computed) == 2 and computed[1] - computed[0] < 0.2  # did not wait for the first transfer


def test_relay_stage_forwards_tensors_bit_identically(servers: list[DataPlaneServer]) -> None:
    relay = LoadedStage("d/0", "d", 0, "", 1, RELAY_SESSION, None, outputs=("f", "i", "u", "h", "b"),
                        relay=True)
    server_a, sink = _pair(servers, EmulatedLink(uplink_mbps=1000.0, rtt_ms=1.0), first=relay)
    rng = np.random.default_rng(3)
    sent = {
        "f": np.array([np.nan, -0.0, np.inf, -np.inf, 1e-45, 3.4e38], np.float32).reshape(2, 3),
        "i": np.array([np.iinfo(np.int64).min, -1, 0, np.iinfo(np.int64).max], np.int64),
        "u": rng.integers(0, 256, size=(2, 3, 4), dtype=np.uint8),
        "h": rng.standard_normal(7).astype(np.float16),
        "b": np.array([True, False, True]),
    }
    with TensorClient(server_a.endpoint) as client:
        outputs, timings = client.infer("d/0", {**sent, "extra": np.ones(3, np.float32)})
    assert list(outputs) == list(sent)  # declared tensors, in order; the undeclared one stays behind
    for name, array in sent.items():
        assert outputs[name].dtype == array.dtype and outputs[name].shape == array.shape
        assert outputs[name].tobytes() == array.tobytes()
    assert timings["d/0"] == 0.0 and "d/0->link" in timings and "d/1" in timings
    assert len(sink.started) == 1


def test_relay_is_not_held_up_by_a_busy_worker(servers: list[DataPlaneServer]) -> None:
    """A relay stage computes nothing, so it passes requests on even while the node's one
    worker is busy with another stage."""
    gate, busy = threading.Event(), threading.Event()

    class Gated(Echo):
        def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
            busy.set()
            gate.wait(10.0)
            return dict(inputs)

    relay = LoadedStage("d/0", "d", 0, "", 1, RELAY_SESSION, None, relay=True)
    server_a, _ = _pair(servers, EmulatedLink(uplink_mbps=1000.0, rtt_ms=1.0), first=relay, workers=1)
    # node a also serves a gated model stage that occupies its only worker
    server_a._stages.put(LoadedStage("g/0", "g", 0, "x", 1, Gated(), None))
    errors: list[BaseException] = []

    def blocked_call() -> None:
        try:
            with TensorClient(server_a.endpoint) as client:
                client.infer("g/0", {"x": np.ones(1, np.float32)}, timeout=15.0)
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    thread = threading.Thread(target=blocked_call)
    thread.start()
    try:
        assert busy.wait(10.0)
        with TensorClient(server_a.endpoint) as client:
            outputs, _ = client.infer("d/0", {"x": np.full(4, 7, np.int32)}, timeout=5.0)
        assert outputs["x"].tolist() == [7, 7, 7, 7]
        assert not gate.is_set()  # the relay finished while the worker was still busy
    finally:
        gate.set()
        thread.join(15.0)
    assert not errors


def test_relay_deploy_command_loads_nothing(tmp_path: Path) -> None:
    states: list[StageState] = []
    loads: list[Path] = []

    def loader(path: Path) -> Echo:
        loads.append(path)
        return Echo()

    table = StageTable()
    handler = CommandHandler("n1", table, tmp_path, loader, states.append, SystemClock(), threading.Event())
    nxt = NextStage("n2", "tcp://127.0.0.1:1", "dep/1")
    cmd = DeployCommand(deployment_id="dep", stage=0, artifact_url="", sha256="", inputs=["input"],
                        outputs=["input"], next=nxt, generation=2, relay=True)
    handler.deploy(cmd)
    [stage] = table.all()  # whatever key the handler serves it under (the key scheme is not this test's)
    assert stage.relay and stage.session is RELAY_SESSION
    assert stage.next == nxt and stage.outputs == ("input",) and stage.generation == 2
    assert [s.state for s in states] == ["READY"] and not loads
    handler.deploy(cmd)  # idempotent: re-reports READY
    assert [s.state for s in states] == ["READY", "READY"]
    handler.delete(DeleteCommand("dep", None))
    assert table.all() == [] and states[-1].state == "REMOVED"
