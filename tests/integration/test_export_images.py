"""``treeline export-images``: one build context per partition, checked without Docker (our
machines have none): every file a Dockerfile or the compose file names exists, requirements pin
the runtime and exclude torch, and each context's entry point, run as a plain process from the
context (its own copy of the node runtime, nothing from this checkout), serves its partition:
stage 0 forwards to stage 1 and the pipeline answers like the whole model."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from treeline_test_helpers import chain_models, ort_run

from node_engine.data_plane.client import TensorClient
from treeline_cli.export_images import image_kind, warnings, write_contexts
from treeline_common.netutil import free_port

pytestmark = pytest.mark.integration
STAGE_KEYS = ("svc-0/0@1", "svc-0/1@1")


@pytest.fixture(scope="module")
def models() -> dict[str, bytes]:
    return chain_models(3)


@pytest.fixture()
def contexts(tmp_path: Path, models: dict[str, bytes]) -> tuple[Path, list[Path]]:
    parts = [models["part0"], models["part1"]]
    shas = [hashlib.sha256(p).hexdigest() for p in parts]
    placement = {"stages": [
        {"index": i, "node_id": f"n{i}", "stage_key": STAGE_KEYS[i], "sha256": shas[i],
         "outputs": ["h"] if i == 0 else ["y"]} for i in range(2)]}
    by_sha = dict(zip(shas, parts, strict=True))
    folders = write_contexts(placement, by_sha.__getitem__, tmp_path / "out",
                             {"n0": {"arch": "aarch64"}, "n1": {"arch": "x86_64"}})
    return tmp_path / "out", folders


def test_every_referenced_file_exists_and_requirements_exclude_torch(
        contexts: tuple[Path, list[Path]]) -> None:
    out, folders = contexts
    compose = (out / "compose.yaml").read_text()
    assert "dockerfile: Dockerfile.edge" in compose and "dockerfile: Dockerfile.cloud" in compose
    assert "TREELINE_NEXT_ENDPOINT: tcp://stage-1:5555" in compose
    for folder in folders:
        assert f"context: ./{folder.name}" in compose
        for kind, platform in (("edge", "linux/arm64"), ("cloud", "linux/amd64")):
            dockerfile = (folder / f"Dockerfile.{kind}").read_text()
            assert f"FROM --platform={platform} " in dockerfile
            for source in re.findall(r"^COPY (\S+) ", dockerfile, flags=re.MULTILINE):
                assert (folder / source).exists(), f"{folder.name}/Dockerfile.{kind} copies missing {source}"
        assert not (folder / "Dockerfile.edge-arm32").exists()  # only for a 32-bit ARM node
        requirements = (folder / "requirements.txt").read_text().splitlines()
        assert {r.split("==")[0] for r in requirements} == {"onnxruntime", "numpy", "pyzmq"}
        assert all("==" in r for r in requirements) and not any("torch" in r for r in requirements)
        assert (folder / "app" / "node_engine" / "serve_partition.py").is_file()
    first, last = ((f / "README.txt").read_text() for f in folders)
    assert "TREELINE_OUTPUTS=h " in first and "--port 5555 --next-endpoint tcp://127.0.0.1:5556" in first
    assert f"--next-stage-key {STAGE_KEYS[1]}" in first and "--port 5556" in last and "--next" not in last


def test_32_bit_arm_nodes_are_warned_about() -> None:
    assert [image_kind({"arch": a}) for a in ("aarch64", "armv7l", "armv6l", "x86_64", None)] == [
        "edge", "edge-arm32", "edge-arm32", "cloud", "cloud"]
    placement = {"stages": [{"index": 0, "node_id": "pi0"}, {"index": 1, "node_id": "srv"}]}
    [line] = warnings(placement, {"pi0": {"arch": "armv6l"}, "srv": {"arch": "x86_64"}})
    assert line.startswith("stage-0 runs on a armv6l node: onnxruntime publishes no 32-bit ARM wheel")


def serve(folder: Path, port: int, *extra: str) -> subprocess.Popen[str]:
    """The context's entry point as a plain process, importing only the context's own copy."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TREELINE_", "PYTHONPATH"))}
    key = STAGE_KEYS[int(folder.name.split("-")[1])]
    return subprocess.Popen(
        [sys.executable, "-m", "node_engine.serve_partition", "--model", "../partition.onnx",
         "--stage-key", key, "--host", "127.0.0.1", "--port", str(port), *extra],
        cwd=folder / "app", env={**env, "PYTHONSAFEPATH": ""}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)


@pytest.fixture()
def pipeline(contexts: tuple[Path, list[Path]]) -> Iterator[tuple[str, list[subprocess.Popen[str]]]]:
    _, folders = contexts
    ports = [free_port(), free_port()]
    last = serve(folders[1], ports[1])
    first = serve(folders[0], ports[0], "--next-endpoint", f"tcp://127.0.0.1:{ports[1]}",
                  "--next-stage-key", STAGE_KEYS[1], "--outputs", "h")
    processes = [first, last]
    try:
        for process in processes:
            assert process.stdout is not None
            line = process.stdout.readline()  # blocks until it serves (or exits: empty line)
            assert line.startswith("serving "), process.stderr.read() if process.stderr else line
        yield f"tcp://127.0.0.1:{ports[0]}", processes
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(timeout=10)


def test_the_exported_stages_serve_the_pipeline_as_plain_processes(
        pipeline: tuple[str, list[subprocess.Popen[str]]], models: dict[str, bytes]) -> None:
    endpoint, processes = pipeline
    x = np.random.default_rng(0).standard_normal((1, 8)).astype(np.float32)
    with TensorClient(endpoint) as client:
        outputs, _ = client.infer(STAGE_KEYS[0], {"x": x}, timeout=30)
    expected = ort_run(models["whole"], {"x": x}, ("y",))["y"]
    np.testing.assert_allclose(outputs["y"], expected, rtol=1e-5, atol=1e-6)
    for process in processes:
        process.terminate()
        assert process.wait(timeout=10) == 0  # SIGTERM is a clean stop


def test_a_bad_option_is_one_line(contexts: tuple[Path, list[Path]]) -> None:
    _, folders = contexts
    done = subprocess.run([sys.executable, "-m", "node_engine.serve_partition", "--model", "missing.onnx",
                           "--stage-key", "k"], cwd=folders[0] / "app", capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 2 and "--model: no such file: missing.onnx" in done.stderr
    assert "Traceback" not in done.stderr
