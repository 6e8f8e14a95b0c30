"""Neurosurgeon-style regression of per-op time from static op features.

Why: a device class that has never profiled a model still needs op times, and so does an op
that a profile does not cover. Following Neurosurgeon (Kang et al., ASPLOS'17), each op type
gets its own linear model over features the graph analysis already computes::

    ms_ref ≈ a · flops + b · (param_bytes + output_bytes) + c        (a, b, c >= 0)

fitted on every measured op of every profile available (any model, any device class). Times
are normalised to a *reference device* (``speed_factor`` 1.0) by multiplying a measurement
on a device of speed ``s`` by ``s``; a prediction for a device of speed ``s`` is the
reference time divided by ``s``. Op types with fewer than :data:`MIN_SAMPLES_PER_TYPE`
samples use the model fitted on all ops.

The coefficients are non-negative (a negative FLOP cost would let the planner "save" time by
adding work). scipy is not a dependency, so the non-negative least squares is solved exactly
by enumerating the active sets of the three coefficients (8 small ``lstsq`` problems).
Pure: numpy only.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from ml_scheduler.graph import ModelGraph, OpInfo

MIN_SAMPLES_PER_TYPE = 4
# Used when no profile exists at all: ~20 GFLOP/s plus ~2 GB/s on the reference device.
PRIOR_MS_PER_FLOP = 1.0 / 20e6
PRIOR_MS_PER_BYTE = 1.0 / 2e6
PRIOR_MS_PER_OP = 0.005


@dataclass(frozen=True)
class Sample:
    """One measured op, already normalised to the reference device (``ms_ref``)."""

    op_type: str
    flops: float
    nbytes: float  # param_bytes + output_bytes
    ms_ref: float


def op_features(op: OpInfo) -> tuple[float, float]:
    """The two regressors of an op: FLOPs and the bytes it touches (weights + outputs)."""
    return float(op.flops), float(op.param_bytes + op.output_bytes)


def samples_from_times(graph: ModelGraph, op_ms: Sequence[float] | np.ndarray, speed_factor: float,
                       measured: Sequence[bool] | np.ndarray | None = None) -> list[Sample]:
    """Regression samples from per-op times of ``graph`` measured on a device of ``speed_factor``.

    ``measured`` masks out ops whose time was estimated rather than measured.
    """
    speed = speed_factor if speed_factor > 0 else 1.0
    out: list[Sample] = []
    for i, op in enumerate(graph.ops):
        if measured is not None and not measured[i]:
            continue
        ms = float(op_ms[i])
        if not np.isfinite(ms) or ms < 0:
            continue
        flops, nbytes = op_features(op)
        out.append(Sample(op.op_type, flops, nbytes, ms * speed))
    return out


def nnls_small(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Exact non-negative least squares for a handful of columns, by active-set enumeration.

    Columns are scaled to unit max first so FLOPs (1e8) and the constant (1) are solved
    with the same conditioning.
    """
    n_cols = x.shape[1]
    scale = np.abs(x).max(axis=0)
    scale[scale == 0] = 1.0
    xs = x / scale
    best = np.zeros(n_cols)
    best_res = float(np.sum(y**2))
    for size in range(1, n_cols + 1):
        for cols in itertools.combinations(range(n_cols), size):
            sub = xs[:, cols]
            coef, *_ = np.linalg.lstsq(sub, y, rcond=None)
            if np.any(coef < 0):
                continue
            res = float(np.sum((sub @ coef - y) ** 2))
            if res < best_res - 1e-15:
                best_res = res
                best = np.zeros(n_cols)
                best[list(cols)] = coef
    return best / scale


def _fit(samples: Sequence[Sample]) -> np.ndarray:
    x = np.array([[s.flops, s.nbytes, 1.0] for s in samples], dtype=float)
    y = np.array([s.ms_ref for s in samples], dtype=float)
    return nnls_small(x, y)


@dataclass(frozen=True)
class RegressionModel:
    """Per-op-type coefficients ``(a, b, c)`` on the reference device, plus a global fallback."""

    by_type: Mapping[str, tuple[float, float, float]] = field(default_factory=dict)
    fallback: tuple[float, float, float] = (PRIOR_MS_PER_FLOP, PRIOR_MS_PER_BYTE, PRIOR_MS_PER_OP)
    n_samples: int = 0

    @property
    def is_prior(self) -> bool:
        """True when nothing was measured: the coefficients are the fixed prior."""
        return self.n_samples == 0

    def coefficients(self, op_type: str) -> tuple[float, float, float]:
        return self.by_type.get(op_type, self.fallback)

    def predict_ref(self, graph: ModelGraph) -> np.ndarray:
        """Predicted ms per op on the reference device (speed 1.0), shape ``(n_ops,)``."""
        out = np.empty(len(graph.ops))
        for i, op in enumerate(graph.ops):
            a, b, c = self.coefficients(op.op_type)
            flops, nbytes = op_features(op)
            out[i] = a * flops + b * nbytes + c
        return out

    def predict(self, graph: ModelGraph, speed_factor: float) -> np.ndarray:
        """Predicted ms per op on a device of ``speed_factor``, shape ``(n_ops,)``."""
        speed = speed_factor if speed_factor > 0 else 1.0
        return self.predict_ref(graph) / speed


def fit_regression(samples: Iterable[Sample], *, min_per_type: int = MIN_SAMPLES_PER_TYPE) -> RegressionModel:
    """Fit the per-type models (types with enough samples) and the all-ops fallback.

    With no samples at all the result is the fixed prior (:attr:`RegressionModel.is_prior`).
    """
    data = list(samples)
    if not data:
        return RegressionModel()
    by_type_samples: dict[str, list[Sample]] = {}
    for sample in data:
        by_type_samples.setdefault(sample.op_type, []).append(sample)
    fallback = tuple(float(v) for v in _fit(data))
    by_type = {op_type: tuple(float(v) for v in _fit(group))
               for op_type, group in sorted(by_type_samples.items()) if len(group) >= min_per_type}
    return RegressionModel(by_type, fallback, len(data))  # type: ignore[arg-type]
