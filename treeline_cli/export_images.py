"""One container build context per partition of a deployed service, plus a compose file that runs
them as the deployed pipeline (``treeline export-images SERVICE DIR``).

Layout written under ``DIR``::

    compose.yaml              stage-0 .. stage-(k-1), each forwarding to the next; stage-0 publishes 5555
    stage-<i>/Dockerfile.edge   FROM --platform=linux/arm64 python:3.11-slim (Raspberry Pi 4/5, Jetson)
    stage-<i>/Dockerfile.cloud  FROM --platform=linux/amd64 python:3.11-slim
    stage-<i>/requirements.txt  onnxruntime, numpy, pyzmq pinned to the versions installed here (no torch)
    stage-<i>/partition.onnx    the partition artifact (sha256 checked against the placement)
    stage-<i>/app/              the node runtime: node_engine + treeline_common sources
    stage-<i>/README.txt        how to build and run it

The entry point is ``python -m node_engine.serve_partition`` (the node engine's data plane serving
one partition, no control plane), configured by ``TREELINE_*`` environment variables the
Dockerfile and compose file set. compose.yaml builds each stage from the Dockerfile of the node
it runs on in the placement (``edge`` for aarch64/armv7 nodes, ``cloud`` otherwise).

Pure apart from :func:`write_contexts` writing files; the CLI command fetches the placement and
the artifacts.
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Callable, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import node_engine
import treeline_common

RUNTIME_PACKAGES = ("onnxruntime", "numpy", "pyzmq")  # what node_engine.serve_partition imports
PORT = 5555
BASES = {"edge": "linux/arm64", "cloud": "linux/amd64", "edge-arm32": "linux/arm/v7"}
EDGE_ARCHS = frozenset({"aarch64", "arm64"})
ARM32_ARCHS = frozenset({"armv7l", "armv7", "armv6l", "armv6", "arm"})
ARM32_WARNING = ("onnxruntime publishes no 32-bit ARM wheel on PyPI: `pip install` fails on this base; "
                 "run the stage's device on a 64-bit OS (edge image) or build onnxruntime from source")


def requirements(versions: Callable[[str], str] = metadata.version) -> str:
    """Pinned requirements of the partition runtime: no torch, no Flask, no onnx."""
    return "".join(f"{name}=={versions(name)}\n" for name in RUNTIME_PACKAGES)


def dockerfile(kind: str, stage_key: str, outputs: Sequence[str]) -> str:
    """The Dockerfile of one stage for ``kind`` (``edge`` | ``cloud``)."""
    return (f"# {kind} image of stage {stage_key}: written by `treeline export-images`\n"
            f"FROM --platform={BASES[kind]} python:3.11-slim\n"
            "WORKDIR /app\n"
            "COPY requirements.txt /app/requirements.txt\n"
            "RUN pip install --no-cache-dir -r /app/requirements.txt\n"
            "COPY app/ /app/\n"
            "COPY partition.onnx /app/partition.onnx\n"
            f"ENV TREELINE_MODEL=/app/partition.onnx TREELINE_STAGE_KEY={stage_key} "
            f"TREELINE_OUTPUTS={','.join(outputs)} TREELINE_PORT={PORT} TREELINE_HOST=0.0.0.0\n"
            f"EXPOSE {PORT}\n"
            'CMD ["python", "-m", "node_engine.serve_partition"]\n')


def compose(stages: Sequence[Mapping[str, Any]], kinds: Sequence[str]) -> str:
    """compose.yaml running ``stages`` as a pipeline: stage i forwards to ``stage-(i+1):5555``."""
    lines = ["# written by `treeline export-images`: the deployed pipeline, one container per partition",
             "services:"]
    for i in range(len(stages)):
        lines += [f"  stage-{i}:", "    build:", f"      context: ./stage-{i}",
                  f"      dockerfile: Dockerfile.{kinds[i]}"]
        if i + 1 < len(stages):
            lines += ["    environment:",
                      f"      TREELINE_NEXT_ENDPOINT: tcp://stage-{i + 1}:{PORT}",
                      f"      TREELINE_NEXT_STAGE_KEY: {stages[i + 1]['stage_key']}",
                      "    depends_on:", f"      - stage-{i + 1}"]
        if i == 0:
            lines += ["    ports:", f'      - "{PORT}:{PORT}"']
    return "\n".join(lines) + "\n"


def image_kind(node: Mapping[str, Any] | None) -> str:
    """``edge`` for a 64-bit ARM node, ``edge-arm32`` for a 32-bit one (armv6l/armv7l: see
    :data:`ARM32_WARNING`), ``cloud`` otherwise (unknown nodes too)."""
    arch = str((node or {}).get("arch") or "").lower()
    return "edge" if arch in EDGE_ARCHS else "edge-arm32" if arch in ARM32_ARCHS else "cloud"


def warnings(placement: Mapping[str, Any], nodes: Mapping[str, Mapping[str, Any]] | None) -> list[str]:
    """One line per stage whose image cannot be built as written (a 32-bit ARM node)."""
    known = nodes or {}
    return [f"stage-{i} runs on a {known.get(str(s.get('node_id')), {}).get('arch')} node: {ARM32_WARNING}"
            for i, s in enumerate(_model_stages(placement))
            if image_kind(known.get(str(s.get("node_id")))) == "edge-arm32"]


def _model_stages(placement: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return sorted((s for s in placement.get("stages") or [] if int(s.get("index", -1)) >= 0),
                  key=lambda s: int(s["index"]))


def write_contexts(placement: Mapping[str, Any], artifacts: Callable[[str], bytes], out_dir: Path,
                   nodes: Mapping[str, Mapping[str, Any]] | None = None) -> list[Path]:
    """Write the build contexts of ``placement``'s model stages (the relay entry, which has no
    model, is left out: a caller talks to stage-0) and compose.yaml; return the stage folders.

    ``artifacts(sha256)`` returns a partition's bytes; ValueError when they do not hash to it.
    """
    stages = _model_stages(placement)
    if not stages:
        raise ValueError("the placement has no model stages")
    out_dir.mkdir(parents=True, exist_ok=True)
    kinds = [image_kind((nodes or {}).get(str(s.get("node_id")))) for s in stages]
    folders = []
    sources = [Path(node_engine.__file__).parent, Path(treeline_common.__file__).parent]
    for i, stage in enumerate(stages):
        folder = out_dir / f"stage-{i}"
        folder.mkdir(exist_ok=True)
        data = artifacts(str(stage["sha256"]))
        if hashlib.sha256(data).hexdigest() != str(stage["sha256"]).lower():
            raise ValueError(f"stage {i}: artifact does not match sha256 {stage['sha256']}")
        (folder / "partition.onnx").write_bytes(data)
        (folder / "requirements.txt").write_text(requirements())
        for kind in ("edge", "cloud", *(("edge-arm32",) if kinds[i] == "edge-arm32" else ())):
            (folder / f"Dockerfile.{kind}").write_text(dockerfile(kind, str(stage["stage_key"]),
                                                                  list(stage.get("outputs") or [])))
        app = folder / "app"
        for source in sources:
            shutil.copytree(source, app / source.name, dirs_exist_ok=True,
                            ignore=shutil.ignore_patterns("__pycache__", "simulator"))
        (folder / "README.txt").write_text(_readme(i, stages, kinds[i]))
        folders.append(folder)
    (out_dir / "compose.yaml").write_text(compose(stages, kinds))
    return folders


def _readme(i: int, stages: Sequence[Mapping[str, Any]], kind: str) -> str:
    """How to build stage ``i``'s image, and to run it without Docker on one host (port 5555 + i)."""
    stage = stages[i]
    outputs = ",".join(stage.get("outputs") or [])
    command = (f"TREELINE_MODEL=../partition.onnx TREELINE_OUTPUTS={outputs} "
               f"python -m node_engine.serve_partition --stage-key {stage['stage_key']} --port {PORT + i}")
    if i + 1 < len(stages):
        command += (f" --next-endpoint tcp://127.0.0.1:{PORT + i + 1}"
                    f" --next-stage-key {stages[i + 1]['stage_key']}")
    lines = [f"Stage {i} ({stage['stage_key']}), {kind} image ({BASES[kind]}).",
             f"  docker build -f Dockerfile.{kind} -t treeline-stage-{i} .",
             "  (or `docker compose up` in the folder above: the whole pipeline)",
             "Without Docker, every stage on one host (start the last stage first):",
             "  cd app && pip install -r ../requirements.txt",
             f"  {command}",
             "Callers send to stage 0 with the data plane's framing (zmq), e.g. from Python:",
             "  from node_engine.data_plane.client import TensorClient",
             f"  TensorClient('tcp://127.0.0.1:{PORT}').infer(",
             f"      '{stages[0]['stage_key']}', {{'<input name>': array}})"]
    if kind == "edge-arm32":
        lines.append(f"Warning: {ARM32_WARNING}.")
    return "\n".join(lines) + "\n"
