"""Node side of training: refusals (no extra, no data), the model's conversions, the job file."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from node_engine.training import handler as handler_module
from node_engine.training.handler import TrainingHandler
from node_engine.training.job import JobFile, parse_progress
from treeline_common.clock import SystemClock
from treeline_common.messages import encode
from treeline_common.training import RoundProgress, TrainCommand, TrainingSpec, TrainReport

SPEC = TrainingSpec.from_sla({"framework": "flower", "rounds": 2, "data": "data:digits", "model": "m:1"})


def _handler(tmp_path: Path) -> tuple[TrainingHandler, list[TrainReport], threading.Event]:
    reports: list[TrainReport] = []
    got = threading.Event()

    def report(r: TrainReport) -> None:
        reports.append(r)
        got.set()

    return TrainingHandler("n1", tmp_path, report, SystemClock()), reports, got


def test_a_client_without_the_data_refuses_naming_the_file(tmp_path: Path) -> None:
    handler, reports, got = _handler(tmp_path)
    handler.on_train(encode(TrainCommand("job-1", "start", "client", SPEC, "127.0.0.1:1")))
    assert got.wait(10)
    assert reports[0].state == "REFUSED" and "digits.npz" in reports[0].reason
    assert handler.running() == []


def test_a_node_without_the_train_extra_refuses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(handler_module, "missing_extra", lambda: "this node cannot train: flwr not installed")
    handler, reports, got = _handler(tmp_path)
    (tmp_path / "digits.npz").write_bytes(b"")
    handler.on_train(encode(TrainCommand("job-2", "start", "client", SPEC, "127.0.0.1:1")))
    assert got.wait(10)
    assert (reports[0].state, reports[0].job_id) == ("REFUSED", "job-2")
    assert "flwr not installed" in reports[0].reason


def test_a_bad_payload_is_dropped(tmp_path: Path) -> None:
    handler, reports, _ = _handler(tmp_path)
    before = threading.active_count()
    handler.on_train(b'{"v": 1, "job_id": "x", "action": "start"}')  # no spec: decoding fails at once
    handler.on_train(b"[[[[")
    assert threading.active_count() == before  # nothing handed to a worker
    assert reports == []


def test_job_file_and_progress_lines_round_trip(tmp_path: Path) -> None:
    job = JobFile(SPEC, "127.0.0.1:9", str(tmp_path / "d.npz"), clients=3, seed=4)
    assert JobFile.read(job.write(tmp_path / "job.json")) == job
    import json

    from treeline_common import wire

    line = json.dumps(wire.to_dict(RoundProgress("round", 2, 0.5, 0.9, 3)))
    assert parse_progress(line) == RoundProgress("round", 2, 0.5, 0.9, 3)
    assert parse_progress("INFO flwr: starting") is None
    assert parse_progress('{"event": "round", "round": -1}') is None


def test_model_onnx_export_matches_torch_and_reads_back() -> None:
    torch = pytest.importorskip("torch")
    import onnxruntime as ort

    from node_engine.training import model as mlp

    net = mlp.new_model(3)
    x = np.random.default_rng(0).random((5, 64), dtype=np.float32)
    data = mlp.to_onnx(net)
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    got = session.run(None, {mlp.INPUT_NAME: x})[0]
    with torch.no_grad():
        want = net(torch.from_numpy(x)).numpy()
    assert np.allclose(got, want, atol=1e-5)
    other = mlp.new_model(9)
    mlp.set_parameters(other, mlp.parameters_from_onnx(data, list(other.state_dict())))
    pairs = zip(mlp.get_parameters(other), mlp.get_parameters(net), strict=True)
    assert all(np.array_equal(a, b) for a, b in pairs)
    with pytest.raises(ValueError, match="shape"):
        mlp.set_parameters(other, [np.zeros((2, 2), np.float32)] * 4)


def test_head_only_training_leaves_the_body_unchanged() -> None:
    pytest.importorskip("torch")
    from node_engine.training import model as mlp

    net = mlp.new_model(1)
    mlp.freeze_body(net)
    before = mlp.get_parameters(net)
    rng = np.random.default_rng(1)
    x, y = rng.random((64, 64), dtype=np.float32), rng.integers(0, 10, 64)
    mlp.train(net, x, y, epochs=1, batch_size=16, lr=0.5)
    after = mlp.get_parameters(net)
    assert np.array_equal(before[0], after[0])
    assert np.array_equal(before[1], after[1])
    assert not np.array_equal(before[2], after[2])
