"""A node refuses what it must not serve, with a FAILED reason and nothing else done (issue 10, item 7).

Pure checks (node_engine.refusals) are table-driven; the command handler runs against a real
loopback HTTP server serving real ONNX partitions (no MQTT: reports are collected in a list).
"""

from __future__ import annotations

import hashlib
import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest
from treeline_test_helpers import chain_models

from node_engine.artifacts import ArtifactTooLarge, fetch_artifact
from node_engine.commands import CommandHandler
from node_engine.refusals import (
    LOAD_MEMORY_FACTOR,
    MIB,
    artifact_budget,
    deploy_problems,
    identity_of,
    unknown_fields,
)
from node_engine.runtime import load_partition
from node_engine.stages import StageTable
from treeline_common.clock import FakeClock
from treeline_common.messages import DeleteCommand, DeployCommand, NextStage, StageState, encode

SHA = "ab" * 32


class _Files(http.server.BaseHTTPRequestHandler):
    """``GET /<name>``: the bytes, with a Content-Length unless the name starts with ``stream-``."""

    files: ClassVar[dict[str, bytes]] = {}

    def do_GET(self) -> None:
        name = self.path.lstrip("/")
        data = self.files.get(name.removeprefix("stream-"))
        if data is None:
            self.send_response(404)
            self.end_headers()
            return
        self.send_response(200)
        if not name.startswith("stream-"):
            self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        self.close_connection = True  # no length: the end of the connection ends the body

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def base() -> Iterator[str]:
    _Files.files = dict(chain_models(seed=3))
    _Files.files["big"] = b"\x00" * (256 * 1024)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Files)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _sha(name: str) -> str:
    return hashlib.sha256(_Files.files[name]).hexdigest()


def _deploy(base: str, name: str, stage: int = 0, **kw: object) -> DeployCommand:
    fields: dict[str, object] = {"deployment_id": "d", "stage": stage, "artifact_url": f"{base}/{name}",
                                 "sha256": _sha(name.removeprefix("stream-")), "inputs": ["x"],
                                 "outputs": ["h"], "generation": 1}
    fields.update(kw)
    return DeployCommand(**fields)  # type: ignore[arg-type]


Handled = tuple[CommandHandler, list[StageState], StageTable]


def _handler(tmp_path: Path, limit_bytes: int | None = None) -> Handled:
    reports: list[StageState] = []
    table = StageTable()
    handler = CommandHandler("n1", table, tmp_path, load_partition, reports.append, FakeClock(),
                             threading.Event(), memory_limit_bytes=limit_bytes)
    return handler, reports, table


# ---------------------------------------------------------------- pure checks


GOOD = DeployCommand(deployment_id="d", stage=1, artifact_url="http://cluster:8080/a/x", sha256=SHA,
                     inputs=["h"], outputs=["y"], next=NextStage("n2", "tcp://10.0.0.2:5555", "d/1/2"))


@pytest.mark.parametrize(("changes", "problem"), [
    ({"stage": -2}, "stage: must be >= 0 (or -1, a relay entry), not -2"),
    ({"stage": -1}, "stage: -1 is the relay entry's index, and relay is false"),
    ({"generation": -3}, "generation: must be >= 0, not -3"),
    ({"deployment_id": ""}, "deployment_id: must not be empty"),
    ({"deployment_id": "a/b"}, "deployment_id: must not contain '/'"),
    ({"sha256": "abc"}, "sha256: must be 64 hex digits"),
    ({"artifact_url": "file:///etc/passwd"}, "artifact_url: must be an http(s) URL"),
    ({"inputs": ["x", ""]}, "inputs[1]: must not be empty"),
    ({"next": NextStage("n2", "10.0.0.2:5555", "d/1/2")}, "next.endpoint: must be tcp://host:port"),
    ({"next": NextStage("n2", "tcp://10.0.0.2:99999", "d/1/2")}, "next.endpoint: must be tcp://host:port"),
    ({"next": NextStage("n2", "tcp://10.0.0.2:5555", "")}, "next.stage_key: must not be empty"),
    ({"next": NextStage("", "tcp://[::1]:5555", "d/1/2")}, "next.node_id: must not be empty"),
])
def test_deploy_problems_name_the_field(changes: dict[str, object], problem: str) -> None:
    import dataclasses

    assert deploy_problems(GOOD) == []
    problems = deploy_problems(dataclasses.replace(GOOD, **changes))  # type: ignore[arg-type]
    assert len(problems) == 1 and problems[0].startswith(problem), problems


def test_a_relay_needs_no_artifact() -> None:
    relay = DeployCommand(deployment_id="d", stage=0, artifact_url="", sha256="", inputs=["x"], outputs=["x"],
                          relay=True)
    assert deploy_problems(relay) == []


@pytest.mark.parametrize(("payload", "meant"), [
    (b'{"v": 1, "deployment_id": "d", "stage": 2, "generation": 4, "inputs": "oops"}', ("d", 2, 4)),
    (b'{"v": 1, "deployment_id": "d", "stage": 2, "generation": "x"}', ("d", 2, 0)),
    (b'{"v": 1, "deployment_id": "d", "stage": "2"}', None),
    (b'{"v": 1, "deployment_id": "", "stage": 2}', None),
    (b'{"v": 1, "stage": true, "deployment_id": "d"}', None),
    (b"[1, 2]", None),
    (b"\xff not json", None),
    (b"[" * 100_000, None),
])
def test_identity_of_a_bad_payload(payload: bytes, meant: tuple[str, int, int] | None) -> None:
    assert identity_of(payload) == meant


def test_unknown_fields_are_named() -> None:
    body = json.loads(encode(GOOD))
    body.update(colour="blue", zz=1)
    assert unknown_fields(DeployCommand, json.dumps(body)) == ["colour", "zz"]
    assert unknown_fields(DeployCommand, encode(GOOD)) == []


def test_artifact_budget() -> None:
    assert artifact_budget(None, 10) is None
    assert artifact_budget(100 * MIB, 40 * MIB) == int(60 * MIB / LOAD_MEMORY_FACTOR)
    assert artifact_budget(100 * MIB, 200 * MIB) == 0


# ---------------------------------------------------------------- the command handler


def test_an_oversized_partition_is_refused_before_download(base: str, tmp_path: Path) -> None:
    handler, reports, table = _handler(tmp_path, limit_bytes=256 * 1024)  # room for 128 KiB of artifact
    handler.deploy(_deploy(base, "big"))
    assert [r.state for r in reports] == ["DOWNLOADING", "FAILED"]
    reason = reports[-1].reason
    assert reason.startswith("memory limit exceeded: the partition needs about 512.0 KB "
                             "(256.0 KB artifact × 2)")
    assert reason.endswith("this node has 256.0 KB free of its 256.0 KB limit (0 stage(s) loaded)")
    assert table.keys() == [] and list(tmp_path.iterdir()) == []


def test_a_streamed_oversized_partition_is_cut_off(base: str, tmp_path: Path) -> None:
    with pytest.raises(ArtifactTooLarge) as info:
        fetch_artifact(f"{base}/stream-big", _sha("big"), tmp_path, max_bytes=64 * 1024)
    assert info.value.size is None and "more than 65536 bytes" in str(info.value)
    assert list(tmp_path.iterdir()) == []  # the partial file is gone
    handler, reports, _ = _handler(tmp_path, limit_bytes=256 * 1024)
    handler.deploy(_deploy(base, "stream-big"))
    assert reports[-1].state == "FAILED" and "needs more than 256.0 KB" in reports[-1].reason


def test_loaded_stages_count_against_the_limit(base: str, tmp_path: Path) -> None:
    part0, part1 = len(_Files.files["part0"]), len(_Files.files["part1"])
    assert part0 > part1
    limit = int((part0 + part1) * LOAD_MEMORY_FACTOR) + 100  # part0 and part1 fit, part0 twice does not
    handler, reports, table = _handler(tmp_path, limit_bytes=limit)
    handler.deploy(_deploy(base, "part0", stage=0))
    handler.deploy(_deploy(base, "part0", stage=0, generation=2))
    assert reports[-1].state == "FAILED" and "(1 stage(s) loaded)" in reports[-1].reason
    handler.deploy(_deploy(base, "part1", stage=1))
    assert reports[-1].state == "READY" and table.keys() == ["d/1/0", "d/1/1"]
    # a re-deploy of a loaded key with other bytes is charged instead of the old ones, not on top
    handler.deploy(_deploy(base, "part1", stage=0))
    assert reports[-1].state == "READY" and table.get("d/1/0").sha256 == _sha("part1")  # type: ignore[union-attr]
    handler.deploy(_deploy(base, "part0", stage=2))
    assert reports[-1].state == "FAILED" and "(2 stage(s) loaded)" in reports[-1].reason
    handler.delete(DeleteCommand("d", stage=1))
    handler.deploy(_deploy(base, "part0", stage=2))
    assert reports[-1].state == "READY" and table.keys() == ["d/1/0", "d/1/2"]


def test_an_oversized_file_already_on_disk_is_kept_but_refused(base: str, tmp_path: Path) -> None:
    fetch_artifact(f"{base}/big", _sha("big"), tmp_path)
    with pytest.raises(ArtifactTooLarge) as info:
        fetch_artifact(f"{base}/big", _sha("big"), tmp_path, max_bytes=1024)
    assert info.value.size == len(_Files.files["big"])
    assert (tmp_path / f"{_sha('big')}.onnx").exists()


def test_semantically_bad_deploys_and_deletes_fail_without_side_effects(base: str, tmp_path: Path) -> None:
    handler, reports, table = _handler(tmp_path)
    handler.deploy(_deploy(base, "part0", stage=-2))
    handler.deploy(_deploy(base, "part0", next=NextStage("n2", "127.0.0.1", "d/1/1")))
    assert [(r.stage, r.state) for r in reports] == [(-2, "FAILED"), (0, "FAILED")]
    assert reports[0].reason == "bad command: stage: must be >= 0 (or -1, a relay entry), not -2"
    assert reports[1].reason == "bad command: next.endpoint: must be tcp://host:port, not '127.0.0.1'"
    handler.deploy(_deploy(base, "part0"))
    reports.clear()
    handler.delete(DeleteCommand("d", stage=0, generation=-1))
    handler.delete(DeleteCommand("d/x"))  # names no stage: logged only
    assert [(r.stage, r.state, r.generation) for r in reports] == [(0, "FAILED", -1)]
    assert reports[0].reason.endswith("generation: must be >= 0, not -1; nothing was deleted")
    assert table.keys() == ["d/1/0"]
    assert list(tmp_path.iterdir()) == [tmp_path / f"{_sha('part0')}.onnx"]


def test_undecodable_payloads_report_the_stage_they_meant_and_the_worker_goes_on(
        base: str, tmp_path: Path) -> None:
    handler, reports, table = _handler(tmp_path)
    ready = threading.Event()

    def report(state: StageState) -> None:
        reports.append(state)
        if state.state == "READY":
            ready.set()

    handler._report = report
    handler.start()
    try:
        handler.on_deploy(b'{"v": 1, "deployment_id": "d", "stage": 3, "generation": 1, "sha256": 7}')
        handler.on_deploy(b"garbage")  # no stage readable: dropped
        handler.on_delete(b'{"v": 1, "deployment_id": "d", "stage": 4, "generation": "x"}')
        extra = json.loads(encode(_deploy(base, "part0")))
        extra["future_option"] = True  # unknown fields are tolerated
        handler.on_deploy(json.dumps(extra).encode())
        assert ready.wait(10)
    finally:
        handler.stop()
    failed = [r for r in reports if r.state == "FAILED"]
    assert [(r.stage, r.generation) for r in failed] == [(3, 1), (4, 0)]
    assert failed[0].reason.startswith("bad command: DeployCommand:")
    assert "sha256" in failed[0].reason or "artifact_url" in failed[0].reason
    assert "generation must be an integer" in failed[1].reason
    assert table.keys() == ["d/1/0"]
