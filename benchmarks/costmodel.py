"""How well the cost model predicts stage times: MobileNetV2 on emulated server / jetson-nano / rpi4.

Why: every plan the scheduler returns is only as good as its predicted stage times. This
benchmark profiles the whole model with the node engine's own code path
(``node_engine.profiling.profile_file`` + ``node_engine.runtime.profile_model``, in-process, the
emulation factor applied exactly as a node applies it), cuts MobileNetV2 into 3 partitions at
several cut sets, runs every partition the way a node serves it (an ORT session with the same
options; the emulated slowdown is ``node_engine.emulation.slowdown_seconds`` added to the
measured elapsed time, computed rather than waited out, which changes nothing measured), and
compares the median stage time with the cost model's ``sum(op ms)`` over the stage's ops.

Reported: ``prediction_error_p50/p90`` (|pred - meas| / meas over every stage x device class,
all three classes profiled) and ``regression_error_p50/p90`` (each class predicted only from
the *other* classes' profiles: the Neurosurgeon-style regression a new device class gets).
Run ``python -m benchmarks.costmodel [--quick]``.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx

import model_zoo
from ml_scheduler.costmodel import CostModel, prediction_error, stage_times
from ml_scheduler.extract import extract_partitions
from ml_scheduler.graph import ModelGraph, analyze_model
from ml_scheduler.partition import balanced_cuts
from node_engine.emulation import slowdown_seconds
from node_engine.profiling import profile_file
from node_engine.runtime import load_partition, profile_model, random_inputs
from treeline_common.messages import ProfileCommand
from treeline_common.profiles import PROFILES

log = logging.getLogger(__name__)

DEVICE_CLASSES = ("server", "jetson-nano", "rpi4")
THREADS = 1


def _cut_sets(graph: ModelGraph, count: int) -> list[list[int]]:
    """FLOP-balanced cuts first, then evenly spread op-index cuts at different offsets."""
    n = len(graph.ops)
    sets = [balanced_cuts(graph, 3)]
    for shift in np.linspace(0.15, 0.45, max(1, count - 1)):
        a = max(1, int(n * shift))
        b = min(n - 1, max(a + 1, int(n * (shift + 0.35))))
        if [a, b] not in sets:
            sets.append([a, b])
    return sets[:count]


def _stage_ms(model: onnx.ModelProto, graph: ModelGraph, positions: list[int], speed: float,
              reps: int, workdir: Path) -> list[float]:
    """Median emulated ms of every partition, each fed the real outputs of the previous ones."""
    parts = extract_partitions(model, graph, positions)
    sessions = []
    for part in parts:
        path = workdir / f"{part.sha256}.onnx"
        path.write_bytes(part.model_bytes)
        sessions.append(load_partition(path, THREADS))
    feed = random_inputs(sessions[0]._session)  # the same feed the profiler builds
    values: dict[str, np.ndarray] = dict(feed)
    medians = []
    for session in sessions:
        inputs = {name: values[name] for name in session.input_names}
        session.run(inputs)  # warm-up
        samples = []
        for _ in range(reps):
            start = time.perf_counter()
            outputs = session.run(inputs)
            elapsed = time.perf_counter() - start
            samples.append((elapsed + slowdown_seconds(elapsed, speed)) * 1000.0)
        values.update(outputs)
        medians.append(statistics.median(samples))
    return medians


def run(quick: bool = False) -> dict[str, Any]:
    """Measure the prediction errors; returns the figures (and the per-stage rows)."""
    cache = Path(os.environ.get("TREELINE_MODEL_CACHE", Path(tempfile.gettempdir()) / "treeline-models"))
    data = model_zoo.cached_onnx("mobilenet_v2", cache)
    model = onnx.load_from_string(data)
    graph = analyze_model(model)
    runs, reps, n_cuts = (10, 10, 3) if quick else (30, 30, 6)
    speeds = {c: PROFILES[c].speed_factor for c in DEVICE_CLASSES}
    with tempfile.TemporaryDirectory(prefix="treeline-costmodel-") as tmp:
        workdir = Path(tmp)
        model_path = workdir / "mobilenet_v2.onnx"
        model_path.write_bytes(data)
        profiles: dict[str, dict[str, Any]] = {}
        for device_class, speed in speeds.items():
            cmd = ProfileCommand(f"bench-{device_class}", "", "", runs=runs, warmup=3)
            op_ms, total, _ = profile_file(model_path, cmd, threads=THREADS, speed_factor=speed,
                                           profiler=profile_model)
            profiles[device_class] = {"op_ms": op_ms, "total_ms": total}
            log.info("profiled %s: %d kernels, %.2f ms per run", device_class, len(op_ms), total)
        full = CostModel.from_profiles(graph, profiles, speeds)
        held_out = {c: CostModel.from_profiles(graph, {k: v for k, v in profiles.items() if k != c}, speeds)
                    for c in DEVICE_CLASSES}
        rows: list[dict[str, Any]] = []
        for positions in _cut_sets(graph, n_cuts):
            for device_class, speed in speeds.items():
                measured = _stage_ms(model, graph, positions, speed, reps, workdir)
                ms, source = full.op_ms(graph, device_class, speed)
                reg_ms, reg_source = held_out[device_class].op_ms(graph, device_class, speed)
                assert source == "profile" and reg_source == "regression"
                predicted = stage_times(ms, positions)
                regression = stage_times(reg_ms, positions)
                for j, stage_ms in enumerate(measured):
                    rows.append({"cuts": positions, "device_class": device_class, "stage": j,
                                 "measured_ms": stage_ms, "predicted_ms": float(predicted[j]),
                                 "regression_ms": float(regression[j])})
    measured_ms = [r["measured_ms"] for r in rows]
    err = prediction_error([r["predicted_ms"] for r in rows], measured_ms)
    reg_err = prediction_error([r["regression_ms"] for r in rows], measured_ms)
    result: dict[str, Any] = {
        "model": "mobilenet_v2", "device_classes": list(DEVICE_CLASSES), "threads": THREADS, "quick": quick,
        "stages": len(rows),
        "prediction_error_p50": float(np.percentile(err, 50)),
        "prediction_error_p90": float(np.percentile(err, 90)),
        "regression_error_p50": float(np.percentile(reg_err, 50)),
        "regression_error_p90": float(np.percentile(reg_err, 90)),
        "rows": rows,
    }
    for device_class in DEVICE_CLASSES:
        mask = np.array([r["device_class"] == device_class for r in rows])
        result[f"prediction_error_p50_{device_class}"] = float(np.percentile(err[mask], 50))
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.costmodel",
                                     description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="fewer runs and cut sets")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    result = run(args.quick)
    print(f"{'cuts':<12} {'class':<12} {'stage':>5} {'measured':>9} {'profile':>9} {'err':>6} "
          f"{'regress':>9} {'err':>6}")
    for r in result["rows"]:
        e = abs(r["predicted_ms"] - r["measured_ms"]) / r["measured_ms"]
        g = abs(r["regression_ms"] - r["measured_ms"]) / r["measured_ms"]
        print(f"{r['cuts']!s:<12} {r['device_class']:<12} {r['stage']:>5} {r['measured_ms']:>9.2f} "
              f"{r['predicted_ms']:>9.2f} {e:>6.1%} {r['regression_ms']:>9.2f} {g:>6.1%}")
    for key in ("prediction_error_p50", "prediction_error_p90",
                "regression_error_p50", "regression_error_p90"):
        print(f"{key}: {result[key]:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
