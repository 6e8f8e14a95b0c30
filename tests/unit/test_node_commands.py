"""Command handling and registration against a real local HTTP server (no MQTT needed)."""

from __future__ import annotations

import hashlib
import http.server
import json
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
from treeline_test_helpers import chain_models

from node_engine.artifacts import fetch_artifact
from node_engine.commands import CommandHandler
from node_engine.profiling import ProfileWorker
from node_engine.registration import backoff_delay, register
from node_engine.runtime import load_partition
from node_engine.stages import LoadedStage, StageTable
from treeline_common.clock import FakeClock
from treeline_common.errors import InvalidInput
from treeline_common.messages import (
    DeleteCommand,
    DeployCommand,
    NextStage,
    ProfileCommand,
    ProfileResult,
    StageState,
    encode,
)


class _Handler(http.server.BaseHTTPRequestHandler):
    files: ClassVar[dict[str, bytes]] = {}
    authorizations: ClassVar[list[str | None]] = []  # the Authorization header of each GET
    register_status = 200

    def do_GET(self) -> None:
        self.authorizations.append(self.headers.get("Authorization"))
        data = self.files.get(self.path)
        self.send_response(200 if data is not None else 404)
        self.end_headers()
        self.wfile.write(data or b"")

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", 0))
        body = json.loads(self.rfile.read(length))
        if self.register_status != 200:
            error = {"code": "INVALID_INPUT", "message": "bad body", "details": []}
            answer: dict[str, Any] = {"error": error}
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


Handled = tuple[CommandHandler, list[StageState], StageTable]


@pytest.fixture
def handler(tmp_path: Path) -> Handled:
    reports: list[StageState] = []
    table = StageTable()
    stop = threading.Event()
    commands = CommandHandler("n1", table, tmp_path, load_partition, reports.append, FakeClock(), stop)
    return commands, reports, table


def _deploy(base: str, name: str, sha: str | None = None, stage: int = 0, nxt: NextStage | None = None,
            generation: int = 1) -> DeployCommand:
    return DeployCommand(deployment_id="d", stage=stage, artifact_url=f"{base}/{name}",
                         sha256=sha or _sha(name), inputs=["x"], outputs=["h"], next=nxt,
                         generation=generation)


def test_deploy_reports_states_and_is_idempotent(http_base: str, handler: Handled, tmp_path: Path) -> None:
    commands, reports, table = handler
    commands.deploy(_deploy(http_base, "part0"))
    assert [r.state for r in reports] == ["DOWNLOADING", "LOADING", "READY"]
    assert table.keys() == ["d/1/0"] and (tmp_path / f"{_sha('part0')}.onnx").exists()
    reports.clear()
    nxt = NextStage("n2", "tcp://127.0.0.1:9", "d/1/1")
    commands.deploy(_deploy(http_base, "part0", nxt=nxt))
    assert [(r.state, r.generation) for r in reports] == [("READY", 1)]
    assert table.get("d/1/0").next == nxt  # type: ignore[union-attr]


def test_sha_mismatch_fails_and_deletes_the_file(http_base: str, handler: Handled, tmp_path: Path) -> None:
    commands, reports, table = handler
    wrong = "0" * 64
    commands.deploy(_deploy(http_base, "part0", sha=wrong))
    assert [r.state for r in reports] == ["DOWNLOADING", "FAILED"]
    assert reports[-1].reason == f"sha256 mismatch: expected {wrong} got {_sha('part0')}"
    assert table.keys() == [] and list(tmp_path.iterdir()) == []


def test_downloads_send_the_join_token_only_when_the_node_has_one(http_base: str, tmp_path: Path) -> None:
    """The cluster serves artifacts to join-token holders: deploys and profiling send the node's."""
    _Handler.authorizations.clear()
    fetch_artifact(f"{http_base}/part0", _sha("part0"), tmp_path / "plain")
    reports: list[StageState] = []
    commands = CommandHandler("n1", StageTable(), tmp_path / "deploy", load_partition, reports.append,
                              FakeClock(), threading.Event(), join_token="tlj_id_secret")
    commands.deploy(_deploy(http_base, "part1"))
    assert reports[-1].state == "READY"

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("no profiler here")

    results: list[ProfileResult] = []
    worker = ProfileWorker("n1", "server", tmp_path / "profile", results.append, FakeClock(), threading.Event(),
                           profiler=refuse, join_token="tlj_id_secret")
    result = worker.handle(ProfileCommand("r1", f"{http_base}/part0", _sha("part0"), runs=1, warmup=0))
    assert result is not None and "no profiler here" in str(result.error)
    assert _Handler.authorizations == [None, "Bearer tlj_id_secret", "Bearer tlj_id_secret"]


def test_missing_artifact_and_bad_model_fail_with_reason(http_base: str, handler: Handled) -> None:
    commands, reports, _ = handler
    commands.deploy(_deploy(http_base, "absent", sha="1" * 64))
    assert reports[-1].state == "FAILED" and "HTTP 404" in reports[-1].reason
    _Handler.files["/garbage"] = b"not an onnx model"
    commands.deploy(_deploy(http_base, "garbage"))
    assert reports[-1].state == "FAILED" and reports[-1].reason.startswith("load failed")


def test_delete_unloads_and_reports_removed(http_base: str, handler: Handled) -> None:
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


def test_bad_payloads_are_dropped_and_the_worker_keeps_going(http_base: str, handler: Handled) -> None:
    commands, reports, table = handler
    ready = threading.Event()
    def report(state: StageState) -> None:
        reports.append(state)
        if state.state == "READY":
            ready.set()

    commands._report = report
    commands.start()
    try:
        commands.on_deploy(b"garbage")
        commands.on_deploy(b'{"v": 1, "stage": 0}')
        commands.on_delete(b"[]")
        commands.on_deploy(encode(_deploy(http_base, "part0")))
        assert ready.wait(10)
    finally:
        commands.stop()
    assert table.keys() == ["d/1/0"]


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


# ---------------------------------------------------------------- generations (make-before-break)


def test_new_generation_is_served_beside_the_old_one(http_base: str, handler: Handled) -> None:
    commands, reports, table = handler
    commands.deploy(_deploy(http_base, "part0", generation=1))
    old = table.get("d/1/0")
    assert old is not None
    old.counters.add(2.0)
    reports.clear()
    commands.deploy(_deploy(http_base, "part0", generation=2))
    assert [(r.state, r.generation) for r in reports] == [("DOWNLOADING", 2), ("LOADING", 2), ("READY", 2)]
    assert table.keys() == ["d/1/0", "d/2/0"]
    assert table.get("d/1/0") is old  # untouched: still serving
    new = table.get("d/2/0")
    assert new is not None and new.generation == 2 and new.counters.snapshot() == (0, 0.0)


def test_new_sha_for_the_same_key_replaces_and_keeps_counters(http_base: str, handler: Handled) -> None:
    commands, _, table = handler
    commands.deploy(_deploy(http_base, "part0"))
    first = table.get("d/1/0")
    assert first is not None
    first.counters.add(3.0)
    commands.deploy(_deploy(http_base, "part1"))
    second = table.get("d/1/0")
    assert table.keys() == ["d/1/0"] and second is not None and second.sha256 == _sha("part1")
    assert second.counters.snapshot() == (1, 3.0)


def _relay(generation: int, stage: int = 0) -> DeployCommand:
    return DeployCommand(deployment_id="d", stage=stage, artifact_url="", sha256="", inputs=["x"], outputs=[],
                         generation=generation, relay=True)


def test_relay_stages_are_keyed_by_generation_and_idempotent(handler: Handled) -> None:
    commands, reports, table = handler
    commands.deploy(_relay(3))
    commands.deploy(_relay(3))
    commands.deploy(_relay(4))
    assert [(r.state, r.generation) for r in reports] == [("READY", 3), ("READY", 3), ("READY", 4)]
    assert table.keys() == ["d/3/0", "d/4/0"]


KEYS = ["d/1/0", "d/1/1", "d/2/0", "d/2/1"]


@pytest.mark.parametrize(("command", "removed", "kept"), [
    (DeleteCommand("d"), KEYS, []),
    (DeleteCommand("d", generation=1), ["d/1/0", "d/1/1"], ["d/2/0", "d/2/1"]),
    (DeleteCommand("d", stage=1, generation=2), ["d/2/1"], ["d/1/0", "d/1/1", "d/2/0"]),
    (DeleteCommand("d", stage=0), ["d/1/0", "d/2/0"], ["d/1/1", "d/2/1"]),
    (DeleteCommand("other"), [], KEYS),
    (DeleteCommand("d", generation=7), [], KEYS),
])
def test_delete_selects_by_generation_and_stage(handler: Handled, command: DeleteCommand, removed: list[str],
                                                 kept: list[str]) -> None:
    commands, reports, table = handler
    for generation in (1, 2):
        for stage in (0, 1):
            commands.deploy(_relay(generation, stage))
    table.put(LoadedStage("other/1/0", "other", 0, "", 1, _Closing(), None))  # another deployment
    reports.clear()
    commands.delete(command)
    assert table.keys() == sorted([*kept, *([] if command.deployment_id == "other" else ["other/1/0"])])
    got = sorted(f"{r.deployment_id}/{r.generation}/{r.stage}" for r in reports)
    assert all(r.state == "REMOVED" for r in reports)
    assert got == (removed if command.deployment_id == "d" else ["other/1/0"])


def test_delete_of_a_stage_not_loaded_reports_removed_with_its_generation(handler: Handled) -> None:
    commands, reports, _ = handler
    commands.delete(DeleteCommand("d", stage=2, generation=5))
    commands.delete(DeleteCommand("d", stage=2))
    commands.delete(DeleteCommand("d", generation=5))  # names no stage: nothing to report
    assert [(r.stage, r.generation, r.state) for r in reports] == [(2, 5, "REMOVED"), (2, 0, "REMOVED")]


def test_delete_closes_the_sessions_it_unloads(handler: Handled) -> None:
    commands, _, table = handler
    session = _Closing()
    table.put(LoadedStage("d/1/0", "d", 0, "", 1, session, None))
    commands.delete(DeleteCommand("d", generation=2))
    assert not session.closed
    commands.delete(DeleteCommand("d", generation=1))
    assert session.closed and table.keys() == []


class _Closing:
    """A session that records whether it was closed."""

    input_names: tuple[str, ...] = ()
    output_names: tuple[str, ...] = ()

    def __init__(self) -> None:
        self.closed = False

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(inputs)

    def close(self) -> None:
        self.closed = True
