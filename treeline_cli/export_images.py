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
BASES = {"edge": "linux/arm64", "cloud": "linux/amd64"}
EDGE_ARCHS = frozenset({"aarch64", "arm64", "armv7l", "armv7", "arm"})


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
    """``edge`` for an ARM node, ``cloud`` otherwise (unknown nodes too)."""
    arch = str((node or {}).get("arch") or "").lower()
    return "edge" if arch in EDGE_ARCHS else "cloud"


def write_contexts(placement: Mapping[str, Any], artifacts: Callable[[str], bytes], out_dir: Path,
                   nodes: Mapping[str, Mapping[str, Any]] | None = None) -> list[Path]:
    """Write the build contexts of ``placement``'s model stages (the relay entry, which has no
    model, is left out: a caller talks to stage-0) and compose.yaml; return the stage folders.

    ``artifacts(sha256)`` returns a partition's bytes; ValueError when they do not hash to it.
    """
    stages = sorted((s for s in placement.get("stages") or [] if int(s.get("index", -1)) >= 0),
                    key=lambda s: int(s["index"]))
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
        for kind in BASES:
            (folder / f"Dockerfile.{kind}").write_text(dockerfile(kind, str(stage["stage_key"]),
                                                                  list(stage.get("outputs") or [])))
        app = folder / "app"
        for source in sources:
            shutil.copytree(source, app / source.name, dirs_exist_ok=True,
                            ignore=shutil.ignore_patterns("__pycache__", "simulator"))
        (folder / "README.txt").write_text(
            f"Stage {i} ({stage['stage_key']}), {kinds[i]} image.\n"
            f"  docker build -f Dockerfile.{kinds[i]} -t treeline-stage-{i} .\n"
            "  or, without Docker: cd app && pip install -r ../requirements.txt && "
            "TREELINE_MODEL=../partition.onnx python -m node_engine.serve_partition "
            f"--stage-key {stage['stage_key']}\n")
        folders.append(folder)
    (out_dir / "compose.yaml").write_text(compose(stages, kinds))
    return folders
