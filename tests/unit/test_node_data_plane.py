"""Data plane in one process: real onnxruntime partitions behind real zmq sockets on loopback.

A tiny two-partition model (MatMul-Relu | MatMul-Add) is built with onnx.helper; chaining
the parts through the servers must match the whole model.
"""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper
from treeline_test_helpers import chain_models, chain_weights, onnx_bytes
from treeline_test_helpers import start_data_plane_server as _server

from node_engine.data_plane.client import DataPlaneError, TensorClient
from node_engine.data_plane.server import DataPlaneServer
from node_engine.data_plane.service_client import RetryPolicy, ServiceClient
from node_engine.emulation import Emulator, slowdown_seconds
from node_engine.runtime import load_partition
from node_engine.stages import LoadedStage, StageRunner, StageTable
from treeline_common.clock import FakeClock
from treeline_common.messages import NextStage
from treeline_common.tensor_wire import UNREACHABLE

SEED = 42
RNG = np.random.default_rng(SEED)
chain_weights(RNG)  # the models' weights (chain_models(SEED)) open this stream; test inputs follow


@pytest.fixture(scope="module")
def model_paths(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    paths = {}
    for name, data in chain_models(SEED).items():
        paths[name] = root / f"{name}.onnx"
        paths[name].write_bytes(data)
    return paths


def _stage(key: str, path: Path, next_stage: NextStage | None = None) -> LoadedStage:
    deployment, index = key.rsplit("/", 1)
    return LoadedStage(key=key, deployment_id=deployment, index=int(index), sha256="x", generation=1,
                       session=load_partition(path), next=next_stage)


def _reference(path: Path, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(["y"], {"x": x})[0]


def test_two_nodes_forward_and_relay(model_paths: dict[str, Path], servers: list[DataPlaneServer]) -> None:
    table_a, table_b = StageTable(), StageTable()
    server_b = _server(servers, table_b, "b")
    table_b.put(_stage("d/1", model_paths["part1"]))
    server_a = _server(servers, table_a, "a")
    table_a.put(_stage("d/0", model_paths["part0"], NextStage("b", server_b.endpoint, "d/1")))
    with TensorClient(server_a.endpoint) as client:
        for _ in range(5):
            x = RNG.standard_normal((1, 8)).astype(np.float32)
            outputs, timings = client.infer("d/0", {"x": x})
            np.testing.assert_allclose(outputs["y"], _reference(model_paths["whole"], x), atol=1e-5)
            assert set(timings) == {"d/0", "d/1"}
        inputs = [{"x": RNG.standard_normal((1, 8)).astype(np.float32)} for _ in range(20)]
        results = client.infer_many("d/0", inputs, max_in_flight=6)
    assert len(results) == 20
    for item, (outputs, timings, latency) in zip(inputs, results, strict=True):
        np.testing.assert_allclose(outputs["y"], _reference(model_paths["whole"], item["x"]), atol=1e-5)
        assert latency > 0 and set(timings) == {"d/0", "d/1"}
    assert table_a.get("d/0").counters.snapshot()[0] == 25  # type: ignore[union-attr]


def test_co_located_stages_run_in_process(model_paths: dict[str, Path],
                                          servers: list[DataPlaneServer]) -> None:
    table = StageTable()
    server = _server(servers, table, "solo")
    table.put(_stage("d/1", model_paths["part1"]))
    table.put(_stage("d/0", model_paths["part0"], NextStage("solo", server.endpoint, "d/1")))
    x = RNG.standard_normal((1, 8)).astype(np.float32)
    with TensorClient(server.endpoint) as client:
        outputs, timings = client.infer("d/0", {"x": x})
    np.testing.assert_allclose(outputs["y"], _reference(model_paths["whole"], x), atol=1e-5)
    assert set(timings) == {"d/0", "d/1"}


def test_errors_come_back_as_runtime_errors(model_paths: dict[str, Path],
                                            servers: list[DataPlaneServer]) -> None:
    table = StageTable()
    server = _server(servers, table, "n")
    table.put(_stage("d/0", model_paths["part0"]))
    with TensorClient(server.endpoint) as client:
        with pytest.raises(RuntimeError, match=r"unknown stage 'nope/0'.*d/0"):
            client.infer("nope/0", {"x": np.zeros((1, 8), np.float32)})
        with pytest.raises(RuntimeError, match="missing inputs"):
            client.infer("d/0", {"wrong": np.zeros((1, 8), np.float32)})
        with pytest.raises(RuntimeError, match=r"request 1: .*missing inputs"):
            client.infer_many("d/0", [{"x": np.zeros((1, 8), np.float32)}, {"z": np.zeros(1, np.float32)}])
        # the server keeps serving after errors
        outputs, _ = client.infer("d/0", {"x": np.ones((1, 8), np.float32)})
    assert outputs["h"].shape == (1, 16)


def test_unreachable_downstream_fails_fast_naming_it(model_paths: dict[str, Path],
                                                     servers: list[DataPlaneServer]) -> None:
    """Nothing listens at the next stage's endpoint: the caller hears so at once (not after
    the forward timeout), and the error names the downstream endpoint and stage."""
    from treeline_common.netutil import free_port

    table = StageTable()
    server = _server(servers, table, "a", forward_timeout=30.0)
    gone = f"tcp://127.0.0.1:{free_port()}"
    table.put(_stage("d/0", model_paths["part0"], NextStage("gone", gone, "d/1")))
    with TensorClient(server.endpoint) as client:
        for _ in range(2):  # the first forward opens the link, the second finds it down
            started = time.monotonic()
            expected = re.escape(f"downstream {gone} (stage d/1) unreachable")
            with pytest.raises(DataPlaneError, match=expected) as caught:
                client.infer("d/0", {"x": np.ones((1, 8), np.float32)}, timeout=5.0)
            assert time.monotonic() - started < 2.0
            assert caught.value.code == UNREACHABLE


def test_client_times_out_without_server() -> None:
    from treeline_common.netutil import free_port

    with TensorClient(f"tcp://127.0.0.1:{free_port()}") as client, pytest.raises(TimeoutError):
        client.infer("d/0", {"x": np.ones((1, 8), np.float32)}, timeout=0.2)


def test_slowdown_math() -> None:
    assert slowdown_seconds(0.01, 1.0) == 0.0
    assert slowdown_seconds(0.01, 0.25) == pytest.approx(0.03)
    assert slowdown_seconds(0.02, 0.5) == pytest.approx(0.02)
    assert slowdown_seconds(0.0, 0.1) == 0.0


def test_emulated_runner_reports_device_time_and_stop_interrupts() -> None:
    clock = FakeClock()

    class Session:
        input_names = ("x",)
        output_names = ("y",)

        def run(self, inputs: dict) -> dict:
            clock.advance(0.010)  # "real" compute of 10 ms on the fake clock
            return {"y": inputs["x"]}

        def close(self) -> None:
            pass

    stop = threading.Event()
    waits: list[float] = []

    class RecordingEmulator(Emulator):
        def slow_down(self, elapsed_s: float) -> float:
            extra = super().slow_down(elapsed_s)
            waits.append(extra)
            clock.advance(extra)
            return extra

    stop.set()  # the real wait returns at once; the fake clock models the device time
    runner = StageRunner(RecordingEmulator(0.25, stop), clock)
    stage = LoadedStage("d/0", "d", 0, "x", 0, Session(), None)
    _, compute_ms = runner.run(stage, {"x": np.ones(1)})
    assert waits == [pytest.approx(0.030)]
    assert compute_ms == pytest.approx(40.0)
    assert stage.counters.snapshot() == (1, pytest.approx(40.0))


@pytest.mark.parametrize("bound, expected_peak", [(1, 1), (3, 3)])
def test_in_flight_is_bounded(servers: list[DataPlaneServer], bound: int, expected_peak: int) -> None:
    """Never more than ``bound`` requests in flight at the node; the ones refused as overloaded
    are retried by the ServiceClient, so every request is still answered, in input order."""
    lock = threading.Lock()
    state = {"now": 0, "peak": 0}
    gate = threading.Event()

    class SlowSession:
        input_names = ("x",)
        output_names = ("x",)

        def run(self, inputs: dict) -> dict:
            with lock:
                state["now"] += 1
                state["peak"] = max(state["peak"], state["now"])
            gate.wait(0.05)  # hold the request in flight long enough for others to pile up
            with lock:
                state["now"] -= 1
            return {"x": np.array(inputs["x"])}

        def close(self) -> None:
            pass

    table = StageTable()
    table.put(LoadedStage("s/0", "s", 0, "x", 0, SlowSession(), None))
    server = _server(servers, table, "bounded", max_in_flight=bound, workers=4)
    policy = RetryPolicy(deadline=20.0, backoff_base=0.01, backoff_cap=0.05)
    with ServiceClient(lambda: (server.endpoint, "s/0"), policy=policy) as client:
        outcomes = client.infer_many([{"x": np.full(2, i, np.float32)} for i in range(8)], max_in_flight=8)
    assert all(o.ok for o in outcomes), [str(o.error) for o in outcomes if not o.ok]
    assert [float(o.outputs["x"][0]) for o in outcomes] == [float(i) for i in range(8)]
    assert state["peak"] == expected_peak
    if bound < 8:
        assert max(o.attempts for o in outcomes) > 1  # some were refused and retried


def test_skip_connection_crossing_a_stage_is_passed_through(tmp_path: Path,
                                                            servers: list[DataPlaneServer]) -> None:
    """x -> a=Relu(x) | b=Neg(a) | y=Add(a, b): stage 1 must carry ``a`` on to stage 2."""
    def vi(name: str) -> onnx.ValueInfoProto:
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, 4])

    parts = [
        onnx_bytes([helper.make_node("Relu", ["x"], ["a"])], [vi("x")], [vi("a")], []),
        onnx_bytes([helper.make_node("Neg", ["a"], ["b"])], [vi("a")], [vi("b")], []),
        onnx_bytes([helper.make_node("Add", ["a", "b"], ["y"])], [vi("a"), vi("b")], [vi("y")], []),
    ]
    tables = [StageTable() for _ in parts]
    endpoints = [_server(servers, table, f"n{i}").endpoint for i, table in enumerate(tables)]
    declared = [("a",), ("b", "a"), ("y",)]
    for i, data in enumerate(parts):
        path = tmp_path / f"p{i}.onnx"
        path.write_bytes(data)
        nxt = NextStage(f"n{i + 1}", endpoints[i + 1], f"s/{i + 1}") if i < 2 else None
        tables[i].put(LoadedStage(f"s/{i}", "s", i, "x", 1, load_partition(path), nxt, outputs=declared[i]))
    x = np.array([[1.0, -2.0, 3.0, -4.0]], np.float32)
    with TensorClient(endpoints[0]) as client:
        outputs, timings = client.infer("s/0", {"x": x})
    np.testing.assert_array_equal(outputs["y"], np.zeros((1, 4), np.float32))
    assert list(outputs) == ["y"] and set(timings) == {"s/0", "s/1", "s/2"}
