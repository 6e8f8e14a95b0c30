"""Command handling and registration against a real local HTTP server (no MQTT needed)."""

from __future__ import annotations

import hashlib
import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from treeline_common.clock import FakeClock
from treeline_common.errors import InvalidInput
from treeline_common.messages import DeleteCommand, DeployCommand, NextStage, StageState, encode
from treeline_test_helpers import chain_models

from node_engine.commands import CommandHandler
from node_engine.registration import backoff_delay, register
from node_engine.runtime import load_partition
from node_engine.stages import StageTable



class _Handler(http.server.BaseHTTPRequestHandler):
    files: dict[str, bytes] = {}
    register_status = 200

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        data = self.files.get(self.path)
        self.send_response(200 if data is not None else 404)
        self.end_headers()
        self.wfile.write(data or b"")

    def do_POST(self) -> None:  # noqa: N802
        length = int(self.headers.get("Content-Length", 0))
        body = json.loads(self.rfile.read(length))
        if self.register_status != 200:
            answer = {"error": {"code": "INVALID_INPUT", "message": "bad body", "details": []}}
        else:
            answer = {"node_id": f"node-{body['name']}", "cluster_id": "c1", "mqtt_host": "127.0.0.1",
                      "mqtt_port": 1883, "telemetry_interval": 2}
        raw = json.dumps(answer).encode()
        self.send_response(self.register_status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def log_message(self, format: str, *args: object) -> None:  # silence the default stderr log
        pass


@pytest.fixture(scope="module")
def http_base() -> Iterator[str]:
    models = chain_models(seed=42)
    _Handler.files = {f"/{name}": data for name, data in models.items()}
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _sha(name: str) -> str:
    return hashlib.sha256(_Handler.files[f"/{name}"]).hexdigest()


@pytest.fixture
def handler(tmp_path: Path) -> tuple[CommandHandler, list[StageState], StageTable]:
    reports: list[StageState] = []
    table = StageTable()
    return (CommandHandler("n1", table, tmp_path, load_partition, reports.append, FakeClock(), threading.Event()),
            reports, table)


def _deploy(base: str, name: str, sha: str | None = None, stage: int = 0, nxt: NextStage | None = None) -> DeployCommand:
    return DeployCommand(deployment_id="d", stage=stage, artifact_url=f"{base}/{name}", sha256=sha or _sha(name),
                         inputs=["x"], outputs=["h"], next=nxt, generation=1)


def test_deploy_reports_states_and_is_idempotent(http_base: str, handler: tuple, tmp_path: Path) -> None:
    commands, reports, table = handler
    commands.deploy(_deploy(http_base, "part0"))
    assert [r.state for r in reports] == ["DOWNLOADING", "LOADING", "READY"]
    assert table.keys() == ["d/0"] and (tmp_path / f"{_sha('part0')}.onnx").exists()
    reports.clear()
    nxt = NextStage("n2", "tcp://127.0.0.1:9", "d/1")
    commands.deploy(_deploy(http_base, "part0", nxt=nxt))
    assert [r.state for r in reports] == ["READY"]
    assert table.get("d/0").next == nxt  # type: ignore[union-attr]


def test_sha_mismatch_fails_and_deletes_the_file(http_base: str, handler: tuple, tmp_path: Path) -> None:
    commands, reports, table = handler
    wrong = "0" * 64
    commands.deploy(_deploy(http_base, "part0", sha=wrong))
    assert [r.state for r in reports] == ["DOWNLOADING", "FAILED"]
    assert reports[-1].reason == f"sha256 mismatch: expected {wrong} got {_sha('part0')}"
    assert table.keys() == [] and list(tmp_path.iterdir()) == []


def test_missing_artifact_and_bad_model_fail_with_reason(http_base: str, handler: tuple) -> None:
    commands, reports, _ = handler
    commands.deploy(_deploy(http_base, "absent", sha="1" * 64))
    assert reports[-1].state == "FAILED" and "HTTP 404" in reports[-1].reason
    _Handler.files["/garbage"] = b"not an onnx model"
    commands.deploy(_deploy(http_base, "garbage"))
    assert reports[-1].state == "FAILED" and reports[-1].reason.startswith("load failed")


def test_delete_unloads_and_reports_removed(http_base: str, handler: tuple) -> None:
    commands, reports, table = handler
    commands.deploy(_deploy(http_base, "part0", stage=0))
    commands.deploy(_deploy(http_base, "part1", stage=1))
    reports.clear()
    commands.delete(DeleteCommand("d", None))
    assert sorted((r.stage, r.state) for r in reports) == [(0, "REMOVED"), (1, "REMOVED")]
    assert table.keys() == []
    reports.clear()
    commands.delete(DeleteCommand("d", 1))  # idempotent
    assert [(r.stage, r.state) for r in reports] == [(1, "REMOVED")]


def test_bad_payloads_are_dropped_and_the_worker_keeps_going(http_base: str, handler: tuple) -> None:
    commands, reports, table = handler
    ready = threading.Event()
    commands._report = lambda s: (reports.append(s), s.state == "READY" and ready.set())  # type: ignore[method-assign]
    commands.start()
    try:
        commands.on_deploy(b"garbage")
        commands.on_deploy(b'{"v": 1, "stage": 0}')
        commands.on_delete(b"[]")
        commands.on_deploy(encode(_deploy(http_base, "part0")))
        assert ready.wait(10)
    finally:
        commands.stop()
    assert table.keys() == ["d/0"]


def test_backoff_grows_and_is_capped() -> None:
    delays = [backoff_delay(n) for n in range(8)]
    assert delays[:3] == [0.2, 0.4, 0.8] and delays == sorted(delays) and max(delays) == 5.0


def test_register_answers_and_rejection(http_base: str) -> None:
    registration = register(http_base, {"name": "a"}, threading.Event())
    assert registration is not None and registration.node_id == "node-a" and registration.mqtt_port == 1883
    _Handler.register_status = 400
    try:
        with pytest.raises(InvalidInput):
            register(http_base, {"name": "a"}, threading.Event())
    finally:
        _Handler.register_status = 200


def test_register_gives_up_when_stopped() -> None:
    from treeline_common.netutil import free_port

    stop = threading.Event()
    stop.set()
    assert register(f"http://127.0.0.1:{free_port()}", {"name": "a"}, stop) is None
