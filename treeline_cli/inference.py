"""Drive requests through a deployed pipeline and summarise what was measured.

Latency is measured with one request in flight (what one caller sees); throughput with
several in flight, so a pipeline of stages on different nodes can overlap them. Every
figure comes from requests actually sent in this run.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from node_engine.data_plane.client import TensorClient


LINK_SUFFIX = "->link"  # timing keys "<stage_key>->link": emulated transfer time to the next stage


@dataclass
class InferenceReport:
    requests: int
    p50_ms: float
    p99_ms: float
    mean_ms: float
    throughput_rps: float
    in_flight: int
    stage_ms: dict[str, float] = field(default_factory=dict)  # mean compute ms per stage key
    link_ms: dict[str, float] = field(default_factory=dict)  # mean emulated transfer ms after a stage
    latencies_ms: list[float] = field(default_factory=list, repr=False)
    wall_s: float = 0.0
    samples: dict[str, list[float]] = field(default_factory=dict, repr=False)  # timing key -> ms


def random_inputs(input_spec: dict[str, Any], n: int, seed: int = 0) -> Iterator[dict[str, np.ndarray]]:
    """``n`` random inputs of the model's declared name, shape and dtype."""
    rng = np.random.default_rng(seed)
    shape = tuple(int(d) for d in input_spec["shape"])
    dtype = np.dtype(input_spec.get("dtype", "float32"))
    for _ in range(n):
        if dtype.kind == "f":
            data = rng.standard_normal(shape).astype(dtype)
        else:
            data = rng.integers(0, 100, size=shape).astype(dtype)
        yield {str(input_spec["name"]): data}


def run_requests(
    placement: dict[str, Any], n: int, in_flight: int = 1, seed: int = 0, timeout: float = 60.0
) -> InferenceReport:
    """Send ``n`` random requests to the pipeline's entry stage and measure them."""
    entry = placement["entry"]
    inputs = list(random_inputs(placement["input"], n, seed))  # generated before the clock starts
    with TensorClient(entry["endpoint"]) as client:
        started = time.perf_counter()
        results = client.infer_many(entry["stage_key"], inputs, max_in_flight=in_flight, timeout=timeout)
        wall_s = time.perf_counter() - started
    samples: dict[str, list[float]] = {}
    for _, timings, _ in results:
        for key, ms in timings.items():
            samples.setdefault(key, []).append(float(ms))
    return summarize([latency * 1000.0 for _, _, latency in results], wall_s, samples, in_flight)


def summarize(latencies_ms: list[float], wall_s: float, samples: dict[str, list[float]],
              in_flight: int) -> InferenceReport:
    """Percentiles, throughput and per-stage means of raw measurements."""
    latencies = np.array(latencies_ms)
    return InferenceReport(
        requests=len(latencies_ms),
        p50_ms=float(np.percentile(latencies, 50)),
        p99_ms=float(np.percentile(latencies, 99)),
        mean_ms=float(latencies.mean()),
        throughput_rps=len(latencies_ms) / wall_s if wall_s > 0 else 0.0,
        in_flight=in_flight,
        stage_ms={key: float(np.mean(v)) for key, v in samples.items() if not key.endswith(LINK_SUFFIX)},
        link_ms={key[: -len(LINK_SUFFIX)]: float(np.mean(v)) for key, v in samples.items()
                 if key.endswith(LINK_SUFFIX)},
        latencies_ms=list(latencies_ms),
        wall_s=wall_s,
        samples=samples,
    )


def merge(reports: list[InferenceReport]) -> InferenceReport:
    """One report over several runs of the same deployment (e.g. interleaved rounds)."""
    samples: dict[str, list[float]] = {}
    for report in reports:
        for key, values in report.samples.items():
            samples.setdefault(key, []).extend(values)
    return summarize([ms for r in reports for ms in r.latencies_ms], sum(r.wall_s for r in reports), samples,
                     reports[0].in_flight)
