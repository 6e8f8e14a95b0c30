"""Benchmark of one filter-and-score cycle (``run_filters_and_scores``) over 10,000 nodes.

Why: the cycle runs for every deployment and re-plan, before the exact planner; it must stay
well under 50 ms p50 on a 10,000-node cluster. ``columns()`` (the snapshot's numpy view) is
built once per snapshot and timed separately; building the snapshot itself is not timed.

Run: ``python -m benchmarks.placement`` (add ``--quick`` for fewer repetitions).
"""

from __future__ import annotations

import argparse
import logging
import random
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from deployment_descriptors import NodeSelector, load_profile
from ml_scheduler.framework import Framework, PlacementRequest, run_filters_and_scores
from ml_scheduler.snapshot import ClusterSnapshot, NodeView
from treeline_common.profiles import PROFILES

logger = logging.getLogger(__name__)

_MIB = 1024 * 1024
N_NODES = 10_000


def synthetic_snapshot(n: int = N_NODES, seed: int = 0) -> ClusterSnapshot:
    """``n`` nodes drawn from the device profiles with varied labels, batteries, load and
    ~5% offline; node 0 is ``camera-0`` (the pin / source of :func:`synthetic_request`)."""
    rng = random.Random(seed)
    names = sorted(PROFILES)
    nodes = []
    for i in range(n):
        profile = PROFILES[names[rng.randrange(len(names))]]
        battery = None if profile.battery is None else round(rng.uniform(5, 100), 1)
        labels = tuple(sorted({*profile.labels, f"zone-{rng.randrange(20)}",
                               *(("camera",) if rng.random() < 0.05 else ())}))
        nodes.append(NodeView(
            node_id=f"n{i:05d}", name="camera-0" if i == 0 else f"node-{i}", profile=profile.name,
            online=rng.random() > 0.05 or i == 0, speed_factor=profile.speed_factor * rng.uniform(0.8, 1.2),
            memory_limit_mb=None if profile.memory_limit_mb is None else float(profile.memory_limit_mb),
            arch=profile.arch, accelerators=tuple(a.kind for a in profile.accelerators),
            battery_percent=battery, labels=labels, power_w=profile.power_w,
            radio_nj_per_byte=profile.radio_nj_per_byte, uplink_mbps=profile.uplink_mbps,
            link_rtt_ms=profile.link_rtt_ms, device_class=profile.device_class,
            cpu_percent=round(rng.uniform(0, 100), 1), emulated=profile.emulated,
            runtimes=("onnxruntime",) if rng.random() > 0.01 else ("tflite",),
        ))
    return ClusterSnapshot(tuple(nodes))


def synthetic_request() -> PlacementRequest:
    """A MobileNetV2-sized request (14 MB weights, 0.6 GFLOPs) exercising every filter."""
    return PlacementRequest(
        model_param_bytes=14 * _MIB, min_stage_bytes=600 * _MIB, model_flops=6e8, input_bytes=602_112,
        allowed_archs=("x86_64", "aarch64"), min_battery_percent=30.0, direct_labels=(),
        privacy_pin=NodeSelector(node="camera-0"), source=NodeSelector(label="camera"),
        energy_budget_mj=50.0, latency_ms=200.0, max_partitions=3,
    )


def _times_ms(fn: Callable[[], Any], repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        out.append((time.perf_counter() - start) * 1000.0)
    return out


def run(quick: bool = False) -> dict[str, float]:
    """p50/p90 of one cycle over 10,000 nodes (columns cached) and the one-off columns cost."""
    repeat = 10 if quick else 50
    framework = Framework.from_profile(load_profile("default"))
    request = synthetic_request()
    columns_ms = []
    for seed in range(3 if quick else 5):  # a fresh snapshot each time: columns() is uncached
        snapshot = synthetic_snapshot(N_NODES, seed)
        columns_ms += _times_ms(snapshot.columns, 1)
    snapshot = synthetic_snapshot(N_NODES, 0)
    snapshot.columns()
    run_filters_and_scores(request, snapshot, framework)  # warm-up
    place_ms = _times_ms(lambda: run_filters_and_scores(request, snapshot, framework), repeat)
    return {
        "place_ms_p50_10000nodes": round(float(np.percentile(place_ms, 50)), 3),
        "place_ms_p90_10000nodes": round(float(np.percentile(place_ms, 90)), 3),
        "columns_ms_10000nodes": round(float(np.median(columns_ms)), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    results = run(quick=args.quick)
    width = max(map(len, results))
    logger.info("%s  %s", "metric".ljust(width), "ms")
    for key, value in results.items():
        logger.info("%s  %.3f", key.ljust(width), value)


if __name__ == "__main__":
    main()
