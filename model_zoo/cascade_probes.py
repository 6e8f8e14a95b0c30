"""Probe sets for calibrating a confidence cascade, and the calibration run in onnxruntime.

A probe set is inputs, one request each, with labels when it has them. ``digits``: the 450
held-out images of scikit-learn's digits (the split of :func:`model_zoo.optimize.digits.load_split`:
stratified, seed 0, test_size 0.25), [450, 1, 8, 8] float32 with labels; ``sample_images``:
EfficientNet-Lite0's 24 crops/flips of scikit-learn's sample photographs, unlabelled (the large
model's own answers are then the reference; needs the EfficientNet wheels).

:func:`calibrate_models` runs the small and the large model on every probe input in
onnxruntime (one thread, batch 1), takes the small model's confidence
(:func:`treeline_common.cascade.confidence`) and both top-1 answers, and picks the threshold
with :func:`treeline_common.cascade.calibrate`; the expected mean latency uses the mean run
times measured here (the edge's and the cloud's devices differ: a figure for comparison only).
Needs scikit-learn (the ``export`` extra).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort
from sklearn.datasets import load_digits  # type: ignore[import-untyped]
from sklearn.model_selection import train_test_split  # type: ignore[import-untyped]

from treeline_common.cascade import Calibration, calibrate, confidence


@dataclass(frozen=True)
class Probe:
    """``inputs``: [N, ...] float32, one request per row (kept with a batch axis of 1);
    ``labels``: [N] int64, or None (the large model is the reference)."""

    name: str
    inputs: np.ndarray
    labels: np.ndarray | None


def digits_split(seed: int = 0) -> tuple[Probe, Probe]:
    """scikit-learn's digits split as :func:`model_zoo.optimize.digits.load_split` does, without
    torch: ``(train, test)``, inputs [N, 1, 8, 8] float32 in [0, 1], labels [N] int64 (1,347 / 450)."""
    digits = load_digits()
    x = (digits.images.astype(np.float32) / 16.0)[:, None, :, :]
    x_train, x_test, y_train, y_test = train_test_split(x, digits.target.astype(np.int64), test_size=0.25,
                                                        stratify=digits.target, random_state=seed)
    return Probe("digits-train", x_train, y_train), Probe("digits", x_test, y_test)


def digits_probe(seed: int = 0) -> Probe:
    """The digits' held-out split (module docstring)."""
    return digits_split(seed)[1]


def sample_images_probe() -> Probe:
    """EfficientNet-Lite0's evaluation crops (unlabelled); ImportError without its wheels."""
    from model_zoo.optimize import effnet  # torch and the EfficientNet wheels: imported only here

    return Probe("sample_images", effnet.evaluation_inputs(), None)


PROBES: dict[str, Callable[[], Probe]] = {"digits": digits_probe, "sample_images": sample_images_probe}


def probe_set(name: str) -> Probe:
    """The named probe set; ValueError naming the known ones."""
    if name not in PROBES:
        raise ValueError(f"unknown probe set {name!r}; known: {', '.join(sorted(PROBES))}")
    return PROBES[name]()


def _session(model: bytes) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(model, sess_options=options, providers=["CPUExecutionProvider"])


@dataclass(frozen=True)
class ProbeRun:
    """One model over a probe set: per input the confidence, the top-1 class, the first output."""

    confidence: np.ndarray  # [N] float64
    top1: np.ndarray  # [N] int64
    outputs: list[np.ndarray]
    mean_ms: float


def run_model(model: bytes, probe: Probe, how: str = "softmax_top1") -> ProbeRun:
    """Run ``model`` on every probe input (batch 1), in onnxruntime."""
    sess = _session(model)
    name = sess.get_inputs()[0].name
    names = [o.name for o in sess.get_outputs()]
    conf, top1, firsts, elapsed = [], [], [], 0.0
    for i in range(len(probe.inputs)):
        started = time.perf_counter()
        produced = sess.run(None, {name: probe.inputs[i:i + 1]})
        elapsed += time.perf_counter() - started
        outputs = dict(zip(names, produced, strict=True))
        conf.append(confidence(outputs, how))
        top1.append(int(np.argmax(produced[0])))
        firsts.append(produced[0])
    return ProbeRun(np.asarray(conf), np.asarray(top1, dtype=np.int64), firsts,
                    elapsed * 1000.0 / max(1, len(probe.inputs)))


def calibrate_models(small: bytes, large: bytes, probe: Probe, floor: float,
                     how: str = "softmax_top1") -> Calibration:
    """The threshold meeting ``floor`` on ``probe`` at the lowest mean latency (module docstring)."""
    small_run, large_run = run_model(small, probe, how), run_model(large, probe)
    reference = probe.labels if probe.labels is not None else large_run.top1
    return calibrate(small_run.confidence, small_run.top1 == reference, large_run.top1 == reference, floor,
                     reference="labels" if probe.labels is not None else "large model",
                     small_ms=small_run.mean_ms, escalation_ms=large_run.mean_ms)
