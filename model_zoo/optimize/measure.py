"""Measuring variants in onnxruntime: accuracy, top-1 agreement, interleaved p50 latency.

Everything here runs the ONNX model in onnxruntime's CPU provider, never torch: what is
measured is what a node engine would run. Models have a fixed batch of 1 (as exported), so
accuracy feeds the evaluation images one by one.

Latency: every variant gets ``warmup`` unmeasured runs, then ``runs`` rounds; in each round the
variants run once each in an order shuffled by a seeded generator, so drift on a shared machine
(another process waking, frequency changes) hits every variant alike instead of whichever was
measured last. The figure is the median (p50) of the per-run wall times, in milliseconds.
"""

from __future__ import annotations

import random
import time
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort


def session(onnx_bytes: bytes, threads: int = 1) -> ort.InferenceSession:
    """A CPU session with ``threads`` intra-op threads (1 by default: stable figures on a shared
    host; a node engine may use more) and all graph optimisations on."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(onnx_bytes, sess_options=options, providers=["CPUExecutionProvider"])


def predict(sess: ort.InferenceSession, inputs: np.ndarray) -> np.ndarray:
    """Top-1 class per sample. ``inputs``: [N, ...] float32 → [N] int64 (one run per sample)."""
    name = sess.get_inputs()[0].name
    labels = [int(np.argmax(sess.run(None, {name: inputs[i:i + 1]})[0])) for i in range(len(inputs))]
    return np.asarray(labels, dtype=np.int64)


def accuracy(sess: ort.InferenceSession, inputs: np.ndarray, labels: np.ndarray) -> float:
    """Share of ``inputs`` whose top-1 class equals ``labels`` ([N] int), in [0, 1]."""
    if len(inputs) == 0:
        raise ValueError("accuracy needs at least one input")
    return float(np.mean(predict(sess, inputs) == labels))


def agreement(sess: ort.InferenceSession, reference: ort.InferenceSession, inputs: np.ndarray) -> float:
    """Share of ``inputs`` on which both sessions pick the same top-1 class, in [0, 1]."""
    if len(inputs) == 0:
        raise ValueError("agreement needs at least one input")
    return float(np.mean(predict(sess, inputs) == predict(reference, inputs)))


@dataclass(frozen=True)
class LatencyResult:
    """Per-variant p50 and the settings it was measured with (ms, counts)."""

    p50_ms: dict[str, float]
    runs: int
    warmup: int
    threads: int


def interleaved_p50(sessions: Mapping[str, ort.InferenceSession], sample: np.ndarray, *,
                    runs: int = 300, warmup: int = 20, seed: int = 0, threads: int = 1) -> LatencyResult:
    """p50 latency of each session on ``sample`` ([1, ...] float32), rounds interleaved.

    ``threads`` is only recorded (the sessions were built with it). Raises ValueError when
    ``runs`` < 1 or there is nothing to measure.
    """
    if runs < 1 or not sessions:
        raise ValueError("interleaved_p50 needs runs >= 1 and at least one session")
    feeds = {name: {s.get_inputs()[0].name: sample} for name, s in sessions.items()}
    names = sorted(sessions)
    for name in names:
        for _ in range(warmup):
            sessions[name].run(None, feeds[name])
    timings: dict[str, list[float]] = {name: [] for name in names}
    shuffler = random.Random(seed)
    for _ in range(runs):
        order = names[:]
        shuffler.shuffle(order)
        for name in order:
            start = time.perf_counter()
            sessions[name].run(None, feeds[name])
            timings[name].append((time.perf_counter() - start) * 1000.0)
    return LatencyResult({name: float(np.median(t)) for name, t in timings.items()}, runs, warmup, threads)
