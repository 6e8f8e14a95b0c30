"""Node-side profiling: ORT trace parsing (synthetic and real), emulation scaling, the worker's answers."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

from ml_scheduler.costmodel import CostModel, fusion_heads
from ml_scheduler.graph import analyze_model
from model_zoo.tiny import tiny_dag_bytes
from node_engine.profiling import KernelNamer, ProfileWorker, parse_trace, profile_file, split_runs
from node_engine.runtime import ProfileTrace, profile_model
from treeline_common.clock import FakeClock
from treeline_common.messages import ProfileCommand, ProfileResult, encode


def _run(ts: float, dur: float) -> dict[str, Any]:
    return {"cat": "Session", "name": "model_run", "ts": ts, "dur": dur}


def _kernel(name: str, ts: float, dur: float) -> dict[str, Any]:
    return {"cat": "Node", "name": f"{name}_kernel_time", "ts": ts, "dur": dur, "args": {"op_name": "X"}}


NAMER = KernelNamer(["conv", "clip", "add"], {"c": "conv", "h": "clip", "s": "add"})


def test_kernel_names_map_back_to_onnx_nodes() -> None:
    assert NAMER.node_of("conv") == "conv"
    assert NAMER.node_of("h_nchwc") == "clip"  # fused NCHWc kernel named after its output tensor
    assert NAMER.node_of("conv_nchwc") == "conv"
    assert NAMER.node_of("ReorderOutput_token_3") is None


def test_parse_trace_skips_warmup_folds_inserted_kernels_and_takes_medians() -> None:
    events = [
        _run(0, 100), _kernel("conv", 10, 5000),  # warmup run: ignored
        _run(200, 100), _kernel("ReorderInput", 201, 10), _kernel("h_nchwc", 210, 1000),
        _kernel("ReorderOutput", 220, 100), _kernel("add", 230, 300),
        _run(400, 100), _kernel("h_nchwc", 410, 3000), _kernel("add", 420, 500),
        _run(600, 100), _kernel("h_nchwc", 610, 2000), _kernel("add", 620, 400),
        {"cat": "Session", "name": "session_initialization", "ts": 0, "dur": 9},
    ]
    assert [len(run) for run in split_runs(events)] == [1, 4, 2, 2]
    op_ms = parse_trace(events, NAMER, warmup=1)
    # run 1: clip = 10 (pending ReorderInput) + 1000 + 100 (ReorderOutput) µs
    assert op_ms == {"clip": pytest.approx(np.median([1.11, 3.0, 2.0])), "add": pytest.approx(0.4)}


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("model") / "tiny.onnx"
    path.write_bytes(tiny_dag_bytes(seed=0))
    return path


def test_real_ort_profile_of_tiny_model_covers_every_op(tiny_path: Path) -> None:
    graph = analyze_model(onnx.load(str(tiny_path)))
    cmd = ProfileCommand("r1", "unused", "0" * 64, runs=5, warmup=1)
    op_ms, total, runs = profile_file(tiny_path, cmd, threads=1, speed_factor=1.0, profiler=profile_model)
    names = {op.name for op in graph.ops}
    assert runs == 5 and total > 0
    assert set(op_ms) <= names and all(ms > 0 for ms in op_ms.values())
    # an op without its own kernel was fused into the op it feeds
    heads = fusion_heads(graph, set(op_ms))
    assert {i for i, op in enumerate(graph.ops) if op.name not in op_ms} == set(heads)
    times, source = CostModel.from_profiles(graph, {"server": {"op_ms": op_ms}}).op_times(graph, "server", 1.0)
    assert source == "profile" and times.measured.all() and np.all(times.ms > 0)
    assert times.ms.sum() == pytest.approx(sum(op_ms.values()))


def test_profile_trace_file_is_deleted(tiny_path: Path, tmp_path: Path) -> None:
    trace = profile_model(tiny_path, runs=2, warmup=0, threads=1, trace_dir=tmp_path)
    assert sum(1 for e in trace.events if e.get("name") == "model_run") == 2 and len(trace.run_ms) == 2
    assert list(tmp_path.iterdir()) == []


def test_emulated_node_scales_times_by_its_speed(tiny_path: Path) -> None:
    fixed = ProfileTrace([_run(0, 10), _kernel("conv0", 1, 400), _kernel("fc", 2, 100)], [2.0])
    cmd = ProfileCommand("r", "unused", "0" * 64, runs=1, warmup=0)
    op_ms, total, _ = profile_file(tiny_path, cmd, threads=1, speed_factor=0.25,
                                   profiler=lambda *args, **kwargs: fixed)
    assert op_ms == {"conv0": pytest.approx(1.6), "fc": pytest.approx(0.4)} and total == pytest.approx(8.0)


def test_worker_answers_with_result_or_error(tiny_path: Path, tmp_path: Path) -> None:
    data = tiny_path.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    (tmp_path / f"{sha}.onnx").write_bytes(data)  # already downloaded: fetch_artifact reuses it
    published: list[ProfileResult] = []
    done = threading.Event()

    def publish(result: ProfileResult) -> None:
        published.append(result)
        if len(published) == 2:
            done.set()

    stop = threading.Event()
    worker = ProfileWorker("n1", "rpi4", tmp_path, publish, FakeClock(), stop, threads=1, speed_factor=0.25)
    worker.start()
    try:
        worker.on_profile(b"not json")  # dropped
        worker.on_profile(encode(ProfileCommand("ok", "http://127.0.0.1:9/none", sha, runs=3, warmup=1)))
        worker.on_profile(encode(ProfileCommand("bad", "http://127.0.0.1:9/none", "f" * 64, runs=3)))
        assert done.wait(30)
    finally:
        worker.stop()
        stop.set()
    ok, bad = published
    assert ok.request_id == "ok" and ok.device_class == "rpi4" and ok.sha256 == sha and not ok.error
    assert ok.runs == 3 and ok.total_ms > 0 and ok.op_ms and ok.node_id == "n1"
    assert bad.request_id == "bad" and "download failed" in bad.error and bad.op_ms == {}
