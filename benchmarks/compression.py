"""Boundary compression benchmark: MobileNetV2 cut in two over an emulated slow link and a fast one.

Run ``python -m benchmarks.compression [--quick] [--json PATH]`` (its figures are also part of
``python -m benchmarks.dataplane``). Two real :class:`~node_engine.data_plane.server.DataPlaneServer`
on loopback serve MobileNetV2 cut after op 25 (two tensors, 702,464 bytes, cross the cut); the
first node waits out an emulated uplink before forwarding: a Raspberry Pi 4's (``slow``, profile
``rpi4``: 50 Mbit/s, 5 ms), a server's (``gigabit``, profile ``server``: 1000 Mbit/s, 0.5 ms), or
none (``fast``: loopback as it is, GB/s). For each link the route is switched
between no codec, ``fp16`` and ``int8`` (``NextStage.compression``), interleaved in rounds, one
request in flight; reported per link and codec: ``compression_<link>_<codec>_p50_ms`` end to end.

- ``compressed_link_speedup``: the slow link's p50 without a codec over the best codec's p50;
  ``compressed_link_best_codec`` names it; ``compression_fast_link_speedup`` the same on the fast
  loopback (``compression_gigabit_link_speedup`` on the gigabit link), and
  ``compression_pays_on_fast_link`` whether that is above 1.05 (it is not expected to: there the
  codec's CPU time is of the order of the wire time it saves).
- ``compressed_output_max_abs_diff``: the largest change of the final logits the best codec causes,
  over sample images (valid inputs of the model: uniform [0, 1) images, as ``treeline infer``
  sends), measured by the cluster's own measurement (:func:`cluster_orchestrator.compression.run_chain`)
  and checked against the served answers; ``compression_<codec>_output_max_abs_diff`` per codec,
  ``compressed_output_rel_diff`` relative to the largest logit, and ``compressed_top1_agreement``.
  MobileNetV2 here has seeded random weights (model_zoo), so its logits are small and the
  agreement is on an untrained network; scikit-learn's sample images need Pillow, which is not
  installed, so no photographs are used.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx

import model_zoo
from benchmarks.report import quick_main
from cluster_orchestrator.compression import max_abs_diff, measurement_session, run_chain
from ml_scheduler.extract import Partition, extract_partitions
from ml_scheduler.graph import analyze_model
from node_engine.data_plane.client import TensorClient
from node_engine.data_plane.server import DataPlaneServer
from node_engine.emulation import EmulatedLink, Emulator
from node_engine.runtime import load_partition
from node_engine.stages import LoadedStage, StageRunner, StageTable
from treeline_common.messages import NextStage
from treeline_common.profiles import get_profile

CUT = 25
LINKS = (("slow", "rpi4"), ("gigabit", "server"), ("fast", None))  # None: native, no emulated uplink
CODECS = ("", "fp16", "int8")
PAYS = 1.05


def _label(codec: str) -> str:
    return codec or "none"


def _partitions(workdir: Path) -> tuple[list[Partition], list[Path]]:
    cache = Path(os.environ.get("TREELINE_MODEL_CACHE", Path(tempfile.gettempdir()) / "treeline-models"))
    model = onnx.load_from_string(model_zoo.cached_onnx("mobilenet_v2", cache))
    parts = extract_partitions(model, analyze_model(model), [CUT])
    paths = []
    for part in parts:
        paths.append(workdir / f"part{part.index}.onnx")
        paths[-1].write_bytes(part.model_bytes)
    return parts, paths


def _images(n: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(7)
    return [{"input": rng.random((1, 3, 224, 224), dtype=np.float32)} for _ in range(n)]


def serve_link(profile_name: str | None, parts: Sequence[Partition], paths: Sequence[Path],
               images: Sequence[dict[str, np.ndarray]], requests: int,
               rounds: int) -> tuple[dict[str, list[float]], dict[str, list[np.ndarray]]]:
    """End-to-end ms per codec over ``profile_name``'s uplink (None: loopback as it is), and the
    served logits per image."""
    link = None
    if profile_name is not None:
        profile = get_profile(profile_name)
        link = EmulatedLink(profile.uplink_mbps, profile.link_rtt_ms)
    sink_table, sender_table = StageTable(), StageTable()
    sink = DataPlaneServer(sink_table, StageRunner(), name="box")
    sender = DataPlaneServer(sender_table, StageRunner(Emulator(1.0, link=link)), name="pi")
    first, second = load_partition(paths[0]), load_partition(paths[1])
    samples: dict[str, list[float]] = {c: [] for c in CODECS}
    answers: dict[str, list[np.ndarray]] = {c: [] for c in CODECS}
    try:
        sink_table.put(LoadedStage("c/1/1", "c", 1, "x", 1, second, None, outputs=parts[1].outputs))
        sink.start()
        sender.start()
        with TensorClient(sender.endpoint) as client:
            for r in range(rounds + 1):  # round 0 warms up and collects the answers
                for codec in CODECS:
                    sender_table.put(LoadedStage("c/1/0", "c", 0, "x", 1, first,
                                                 NextStage("box", sink.endpoint, "c/1/1", compression=codec),
                                                 outputs=parts[0].outputs))
                    if r == 0:
                        answers[codec] = [client.infer("c/1/0", x, timeout=60.0)[0]["output"] for x in images]
                        continue
                    for i in range(max(1, requests // rounds)):
                        started = time.perf_counter()
                        client.infer("c/1/0", images[i % len(images)], timeout=60.0)
                        samples[codec].append((time.perf_counter() - started) * 1000.0)
    finally:
        sender.close()
        sink.close()
    return samples, answers


def output_effect(parts: Sequence[Partition], images: Sequence[dict[str, np.ndarray]]) -> dict[str, Any]:
    """Per codec: the largest change of the logits over ``images`` and the top-1 agreement."""
    sessions = [measurement_session(p.model_bytes) for p in parts]
    outputs = [p.outputs for p in parts]
    plain = [run_chain(sessions, outputs, x)[0]["output"] for x in images]
    result: dict[str, Any] = {"logit_max_abs": float(max(np.abs(p).max() for p in plain))}
    for codec in CODECS[1:]:
        coded = [run_chain(sessions, outputs, x, codec, frozenset({0}))[0]["output"] for x in images]
        result[codec] = {
            "diff": max(max_abs_diff({"o": a}, {"o": b}) for a, b in zip(plain, coded, strict=True)),
            "top1": float(np.mean([np.argmax(a) == np.argmax(b) for a, b in zip(plain, coded, strict=True)])),
            "logits": coded}
    return result


def run(quick: bool) -> dict[str, Any]:
    """Every figure of the module docstring."""
    requests, rounds, n_images = (12, 3, 4) if quick else (60, 6, 16)
    result: dict[str, Any] = {"compression_cut_bytes": 0}
    with tempfile.TemporaryDirectory() as workdir:
        parts, paths = _partitions(Path(workdir))
        result["compression_cut_bytes"] = int(parts[0].cut_bytes)
        images = _images(n_images)
        effect = output_effect(parts, images)
        speedups = {}
        for link, profile in LINKS:
            samples, answers = serve_link(profile, parts, paths, images, requests, rounds)
            p50 = {c: statistics.median(samples[c]) for c in CODECS}
            for codec in CODECS:
                result[f"compression_{link}_{_label(codec)}_p50_ms"] = p50[codec]
            best = min(CODECS[1:], key=lambda c: p50[c])
            speedups[link] = (best, p50[""] / p50[best])
            for codec in CODECS[1:]:  # the served answers are what the measurement predicted
                served = max(max_abs_diff({"o": a}, {"o": b})
                             for a, b in zip(answers[codec], effect[codec]["logits"], strict=True))
                result[f"compression_{link}_{codec}_served_vs_measured"] = served
    best, speedup = speedups["slow"]
    result["compressed_link_best_codec"] = best
    result["compressed_link_speedup"] = speedup
    result["compression_gigabit_link_speedup"] = speedups["gigabit"][1]
    result["compression_fast_link_speedup"] = speedups["fast"][1]
    result["compression_fast_link_best_codec"] = speedups["fast"][0]
    result["compression_pays_on_fast_link"] = speedups["fast"][1] > PAYS
    for codec in CODECS[1:]:
        result[f"compression_{codec}_output_max_abs_diff"] = effect[codec]["diff"]
        result[f"compression_{codec}_top1_agreement"] = effect[codec]["top1"]
    result["compressed_output_max_abs_diff"] = effect[best]["diff"]
    result["compressed_output_rel_diff"] = effect[best]["diff"] / effect["logit_max_abs"]
    result["compressed_top1_agreement"] = effect[best]["top1"]
    result["compression_images"] = n_images
    return result


def main(argv: Sequence[str] | None = None) -> int:
    return quick_main(__doc__, "compression", "fewer requests and images (about 10 s)", run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
