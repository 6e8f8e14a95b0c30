"""The model registry through a real stack (broker, embedded MongoDB, root, cluster, 2 node engines as
processes) and the real ``treeline`` CLI: register, list, show (lineage chain, metrics per device
class), alias with --expected, download (sha256 equal to the upload's), delete refused while a
service uses the version, partitions recorded by a real deployment, and one line for a model over
the root's size limit (``TREELINE_MAX_MODEL_MB=1`` here)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import onnx
import pytest
from test_model_intake_stack import conv_model, sla
from treeline_test_helpers import run_cli, running_stack, tiny_mlp

from benchmarks.hardening import write_big_onnx
from treeline_cli.root_client import RootClient
from treeline_cli.stack import Stack

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with pytest.MonkeyPatch.context() as env:
        env.setenv("TREELINE_MAX_MODEL_MB", "1")  # the root inherits it
        with running_stack(tmp_path_factory.mktemp("stack"), nodes=2, profiles=("server", "server"),
                           telemetry_interval=1.0, node_threads=1, node_labels={}) as running:
            yield running


def ok(stack: Stack, cwd: Path, *argv: str) -> str:
    code, out, err = run_cli(stack, cwd, *argv)
    assert code == 0, (argv, out, err)
    return out


def fails(stack: Stack, cwd: Path, *argv: str, code: int = 1) -> str:
    """The command fails with one error line on stderr (progress lines of slow steps may come
    before it), no traceback; that line."""
    got, out, err = run_cli(stack, cwd, *argv)
    errors = [line for line in err if line.startswith("error: ")]
    assert got == code and out == "" and errors == err[-1:], (argv, got, out, err)
    assert not any("Traceback" in line for line in err)
    return err[-1]


def test_register_list_show_alias_download_delete(stack: Stack, tmp_path: Path) -> None:
    first, second = tmp_path / "first.onnx", tmp_path / "second.onnx"
    first.write_bytes(tiny_mlp(1))
    second.write_bytes(tiny_mlp(2))
    ok(stack, tmp_path, "model", "register", str(first), "--name", "reg", "--alias", "prod")
    assert RootClient(stack.root_url).register_model("reg", second.read_bytes())["version"] == 2
    models = json.loads(ok(stack, tmp_path, "model", "list", "-o", "json"))
    [listed] = [m for m in models if m["name"] == "reg"]
    assert (listed["versions"], listed["aliases"], listed["latest_version"], listed["size"]) == (
        2, {"prod": 1}, 2, second.stat().st_size)
    table = ok(stack, tmp_path, "model", "list").splitlines()
    assert table[0].split() == ["NAME", "VERSIONS", "ALIASES", "LATEST", "SIZE"]
    assert any(line.split()[:4] == ["reg", "2", "prod=1", "2"] for line in table[1:])

    RootClient(stack.root_url).update_model_version(
        "reg", 2, description="int8 of v1", tags={"stage": "candidate"},
        lineage={"parent": {"name": "reg", "version": 1}, "operation": "quantize",
                 "parameters": {"mode": "qdq"}, "dataset": "digits", "tools": {"onnxruntime": "1.31"}},
        metrics={"quality": {"accuracy": 0.97}, "latency/server": {"p50_ms": 0.8, "energy_mj": 1.2},
                 "latency/edge": {"p50_ms": 4.1}})
    shown = json.loads(ok(stack, tmp_path, "model", "show", "reg:2", "-o", "json"))
    assert shown["lineage_chain"] == [{"name": "reg", "version": 1, "operation": "quantize",
                                       "parameters": {"mode": "qdq"}, "dataset": "digits"}]
    assert shown["metrics"]["latency/edge"] == {"p50_ms": 4.1} and shown["tags"] == {"stage": "candidate"}
    text = ok(stack, tmp_path, "model", "show", "reg:2")
    assert "quantize(mode=qdq) on digits of reg:1" in text and "DEVICE_CLASS" in text
    assert any(line.split()[:2] == ["edge", "4.1"] for line in text.splitlines())

    line = fails(stack, tmp_path, "model", "alias", "reg", "prod", "2", "--expected", "2")
    assert "points at version 1, not version 2" in line
    moved = ok(stack, tmp_path, "model", "alias", "reg", "prod", "2", "--expected", "1")
    assert "reg@prod -> version 2" in moved
    ok(stack, tmp_path, "model", "alias", "reg", "canary", "1", "--expected", "none")

    got = json.loads(ok(stack, tmp_path, "model", "download", "reg:prod", "-o", "out.onnx", "--json"))
    data = (tmp_path / "out.onnx").read_bytes()
    uploaded = hashlib.sha256(second.read_bytes()).hexdigest()
    assert hashlib.sha256(data).hexdigest() == got["sha256"] == uploaded

    assert "deleted reg:1" in ok(stack, tmp_path, "model", "delete", "reg:1")
    assert "deleted reg (1 version)" in ok(stack, tmp_path, "model", "delete", "reg")


def test_a_deployment_records_its_partitions_and_blocks_the_delete(stack: Stack, tmp_path: Path) -> None:
    model = conv_model([1, 3, 16, 16], [1, 4, 16, 16])
    root = RootClient(stack.root_url)
    root.register_model("parts", model.SerializeToString())
    [application] = root.submit_sla(sla("parts-app", "parts", [1, 3, 16, 16], 2))
    [service_id] = application["microservices"]
    root.deploy_service(service_id)
    service = root.wait_deployed(service_id, timeout=120)
    stages = [s for s in service["placement"]["stages"] if s.get("sha256")]
    partitions = root.model_version("parts", 1)["partitions"]
    assert [(p["stage"], p["sha256"]) for p in partitions] == [(s["index"], s["sha256"]) for s in stages]
    assert len(partitions) == 2
    assert partitions[0]["ops"][0] == 0 and partitions[0]["ops"][1] == partitions[1]["ops"][0]
    assert partitions[0]["cut_bytes"] > 0 and partitions[1]["cut_bytes"] == 0
    assert all(p["deployments"] and p["flops"] > 0 for p in partitions)
    shown = ok(stack, tmp_path, "model", "show", "parts")
    assert "partitions (2):" in shown and partitions[1]["sha256"][:12] in shown
    line = fails(stack, tmp_path, "model", "delete", "parts:1")
    assert "parts-app/m" in line
    root.delete_application(application["applicationID"])
    assert "deleted parts:1" in ok(stack, tmp_path, "model", "delete", "parts:1")


def test_a_model_over_the_size_limit_is_one_line(stack: Stack, tmp_path: Path) -> None:
    big = tmp_path / "big.onnx"
    write_big_onnx(big, 3 << 20)
    onnx.checker.check_model(str(big))
    line = fails(stack, tmp_path, "model", "register", str(big))
    assert "over the root's model size limit" in line and "TREELINE_MAX_MODEL_MB" in line
