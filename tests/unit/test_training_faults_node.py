"""Faults of a federated job on the node side: one-line exit reasons, checkpoints, a resumed
server's round numbering, a starting model the server cannot train reported with its reason
(a real Flower server process), and client starts that repeat or move (real client processes).
"""

from __future__ import annotations

import base64
import hashlib
import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from node_engine.training import checkpoint
from node_engine.training import handler as handler_module
from node_engine.training.failure import MAX_CAUSE_CHARS, exit_reason
from node_engine.training.handler import TrainingHandler
from treeline_common.clock import SystemClock
from treeline_common.messages import encode
from treeline_common.netutil import poll_until
from treeline_common.training import TrainCommand, TrainingSpec, TrainReport

SPEC = TrainingSpec.from_sla({"rounds": 3, "data": "data:digits", "model": "m:1", "min_clients": 1})
GRPC_LOST = """INFO :      Received: train message 5d3
Traceback (most recent call last):
  File "/x/flwr/compat/client/app.py", line 390, in start_client_internal
    message = receive()
grpc._channel._MultiThreadedRendezvous: <_MultiThreadedRendezvous of RPC that terminated with:
\tstatus = StatusCode.UNAVAILABLE
\tdetails = "Socket closed"
>"""


@pytest.mark.parametrize(("code", "log", "want"), [
    (1, GRPC_LOST, "flower client exited with code 1 (connection to the server lost)"),
    (-9, GRPC_LOST, "flower client exited with code -9 (killed by SIGKILL)"),
    (1, "Traceback (most recent call last):\n  File y\nValueError: bad shard\n",
     "flower client exited with code 1 (ValueError: bad shard)"),
    (2, "usage: something\nerror: odd\n", "flower client exited with code 2 (error: odd)"),
    (1, "", "flower client exited with code 1"),
])
def test_exit_reasons_are_one_clean_line(code: int, log: str, want: str) -> None:
    assert exit_reason("client", code, log) == want


def test_a_long_cause_is_clipped() -> None:
    reason = exit_reason("server", 1, "RuntimeError: " + "x" * 1000)
    assert len(reason) < MAX_CAUSE_CHARS + 40 and reason.endswith("…)")


def test_checkpoints_round_trip_and_garbage_is_a_value_error(tmp_path: Path) -> None:
    arrays = [np.arange(6, dtype=np.float32).reshape(2, 3), np.ones(10, np.float32)]
    back = checkpoint.read(checkpoint.write(arrays, tmp_path / "c.npz"))
    assert [a.tolist() for a in back] == [a.tolist() for a in arrays]
    with pytest.raises(ValueError, match="not a parameter checkpoint"):
        checkpoint.from_bytes(b"not an npz")


def test_a_resumed_server_numbers_its_rounds_on_and_does_not_report_round_0(
        capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("flwr")
    from node_engine.training.server import RoundTracker

    saved: list[int] = []

    def save(rnd: int, _arrays: list[np.ndarray]) -> str:
        saved.append(rnd)
        return f"/ck/{rnd}.npz"

    tracker = RoundTracker(lambda _a: (0.5, 0.9), lambda rnd: float(rnd), offset=2, save=save)
    for flower_round in (0, 1):
        tracker.evaluate_fn(flower_round, [np.zeros(2, np.float32)], {})
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(p["round"], p["checkpoint_path"], p["epsilon"]) for p in lines] == [(3, "/ck/3.npz", 3.0)]
    assert saved == [3]


def _onnx_without_the_mlp() -> bytes:
    """A valid ONNX model (Identity) that has none of DigitsMlp's initializers."""
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])])
    return bytes(helper.make_model(graph).SerializeToString())


@pytest.fixture
def model_server() -> Iterator[tuple[str, str]]:
    """An HTTP server on a free loopback port serving the non-MLP model: (url, sha256)."""
    body = _onnx_without_the_mlp()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/m", hashlib.sha256(body).hexdigest()
    finally:
        httpd.shutdown()
        httpd.server_close()


class Reports:
    """The handler's reports, with a deadline-bounded wait for one that matches."""

    def __init__(self) -> None:
        self.items: list[TrainReport] = []
        self._lock = threading.Lock()

    def __call__(self, report: TrainReport) -> None:
        with self._lock:
            self.items.append(report)

    def wait(self, state: str, count: int = 1, timeout: float = 60.0) -> list[TrainReport]:
        def probe() -> list[TrainReport] | None:
            with self._lock:
                found = [r for r in self.items if r.state == state]
            return found if len(found) >= count else None

        return poll_until(probe, timeout, interval=0.05, what=f"{count} {state} report(s)")


def test_a_starting_model_the_server_cannot_train_fails_with_its_reason(
        tmp_path: Path, model_server: tuple[str, str]) -> None:
    pytest.importorskip("flwr")
    pytest.importorskip("torch")
    reports = Reports()
    handler = TrainingHandler("n1", tmp_path, reports, SystemClock())
    url, sha = model_server
    try:
        handler.on_train(encode(TrainCommand("job-m", "start", "server", SPEC, "127.0.0.1:0", url, sha, 2)))
        [failed] = reports.wait("FAILED")
    finally:
        handler.close()
    assert failed.reason == ("starting model: the starting model has no initializer 'fc1.weight': "
                             "not a DigitsMlp")
    assert [r.state for r in reports.items] == ["FAILED"]
    assert handler.running() == []


def test_a_client_start_repeats_idempotently_and_moves_with_the_server(tmp_path: Path) -> None:
    pytest.importorskip("flwr")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "digits.npz", x=rng.random((8, 64), dtype=np.float32), y=rng.integers(0, 10, 8))
    reports = Reports()
    handler = TrainingHandler("n1", tmp_path, reports, SystemClock())
    first = TrainCommand("job-c", "start", "client", SPEC, "127.0.0.1:9")  # nothing listens: it retries
    try:
        handler.on_train(encode(first))
        reports.wait("STARTED")
        pid = handler._children[("job-c", "client")].process.pid
        handler.on_train(encode(first))
        reports.wait("STARTED", 2)
        assert handler._children[("job-c", "client")].process.pid == pid  # the same process
        handler.on_train(encode(TrainCommand("job-c", "start", "client", SPEC, "127.0.0.1:10")))
        reports.wait("STOPPED")
        [*_, moved] = reports.wait("STARTED", 3)
        assert moved.server_address == "127.0.0.1:10"
        assert handler._children[("job-c", "client")].process.pid != pid
        assert handler.running() == [("job-c", "client")]
        assert not [r for r in reports.items if r.state in ("FAILED", "REFUSED")], reports.items
    finally:
        handler.close()


def test_a_resume_checkpoint_that_fails_its_digest_is_refused(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(handler_module, "missing_extra", lambda: "")
    reports = Reports()
    handler = TrainingHandler("n1", tmp_path, reports, SystemClock())
    handler.on_train(encode(TrainCommand("job-r", "start", "server", SPEC, "127.0.0.1:0", start_round=1,
                                          checkpoint_b64=base64.b64encode(b"params").decode(),
                                          checkpoint_sha256="0" * 64)))
    [refused] = reports.wait("REFUSED", timeout=10)
    assert refused.reason == "checkpoint: sha256 mismatch, expected 000000000000"
    assert handler.running() == []


def test_a_server_resumed_after_the_last_round_only_exports_the_checkpoint(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("flwr")
    pytest.importorskip("torch")
    import onnxruntime as ort

    from node_engine.training import model as mlp
    from node_engine.training.job import JobFile
    from node_engine.training.server import run

    trained = mlp.get_parameters(mlp.new_model(5))
    resume = checkpoint.write(trained, tmp_path / "resume-3.npz")
    job = JobFile(SPEC, "127.0.0.1:1", "", out_path=str(tmp_path / "out.onnx"), start_round=SPEC.rounds,
                  resume_path=str(resume))
    assert run(job) == 0  # nothing listens on port 1 and nothing needs to: no round is left
    [done] = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert (done["event"], done["round"]) == ("done", SPEC.rounds)
    x = np.random.default_rng(0).random((3, 64), dtype=np.float32)
    net = mlp.new_model(0)
    mlp.set_parameters(net, trained)
    got = ort.InferenceSession(str(tmp_path / "out.onnx"), providers=["CPUExecutionProvider"]).run(
        None, {mlp.INPUT_NAME: x})[0]
    import torch

    with torch.no_grad():
        assert np.allclose(got, net(torch.from_numpy(x)).numpy(), atol=1e-5)
