"""The cost model: per-op ms for one model on any device class.

Why one object: the planner needs an ``(m devices x n ops)`` matrix, and each row comes from
the best evidence there is. A device class that measured this model uses its profile
(:mod:`ml_scheduler.costmodel.optimes`); any other class gets the regression fitted on every
profile at hand (:mod:`ml_scheduler.costmodel.regression`), scaled by its speed factor. With
no profile at all the regression is a fixed FLOPs/bytes prior, so planning always works.

Profiles are normalised by the speed factor of the device class that measured them. The
cluster knows those factors (every ``NodeView`` carries one); :meth:`CostModel.with_speed_factors`
refits once they are known. Until then a class is looked up in the named emulation profiles
(``treeline_common.profiles``, pure data) and falls back to 1.0.
Immutable and pure: no I/O.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, is_dataclass
from typing import Any

import numpy as np

from ml_scheduler.costmodel.optimes import OpTimes, attribute
from ml_scheduler.costmodel.regression import (
    RegressionModel,
    Sample,
    fit_regression,
    samples_from_times,
)
from ml_scheduler.graph import ModelGraph

log = logging.getLogger(__name__)

SOURCE_PROFILE = "profile"
SOURCE_REGRESSION = "regression"


@dataclass(frozen=True)
class MeasuredProfile:
    """The parts of a ``ProfileResult`` the cost model uses."""

    device_class: str
    op_ms: Mapping[str, float]
    total_ms: float = 0.0
    sha256: str = ""

    @classmethod
    def from_any(cls, device_class: str, body: Any) -> MeasuredProfile | None:
        """From a ProfileResult, its dict form (root JSON), or None when it is unusable (error/empty)."""
        if is_dataclass(body) and not isinstance(body, type):
            body = asdict(body)
        if not isinstance(body, Mapping) or body.get("error") or not body.get("op_ms"):
            return None
        op_ms = {str(k): float(v) for k, v in dict(body["op_ms"]).items()
                 if isinstance(v, (int, float)) and not isinstance(v, bool)}
        return cls(device_class, op_ms, float(body.get("total_ms") or 0.0), str(body.get("sha256") or ""))


def default_speed_factor(device_class: str) -> float:
    """Speed of a named emulation profile; 1.0 for native or unknown classes."""
    try:
        from treeline_common.profiles import PROFILES
    except ImportError:  # pragma: no cover - treeline_common ships with ml_scheduler
        return 1.0
    profile = PROFILES.get(device_class)
    return float(profile.speed_factor) if profile is not None and profile.emulated else 1.0


@dataclass(frozen=True, eq=False)
class CostModel:
    """Per-op times of ``graph`` per device class. Build with :meth:`from_profiles`."""

    graph: ModelGraph
    profiles: Mapping[str, MeasuredProfile] = field(default_factory=dict)
    speed_factors: Mapping[str, float] = field(default_factory=dict)
    regression: RegressionModel = field(default_factory=RegressionModel)
    extra_samples: tuple[Sample, ...] = ()

    @classmethod
    def from_profiles(cls, graph: ModelGraph, profiles: Mapping[str, Any] | None = None,
                      speed_factors: Mapping[str, float] | None = None,
                      extra_samples: Sequence[Sample] = ()) -> CostModel:
        """``profiles``: ``{device_class: ProfileResult or its JSON dict}`` for this model.

        ``extra_samples`` are regression samples from other models' profiles (so a model never
        profiled anywhere still gets a fitted, not prior, regression).
        """
        usable: dict[str, MeasuredProfile] = {}
        for device_class, body in (profiles or {}).items():
            measured = MeasuredProfile.from_any(device_class, body)
            if measured is None:
                log.info("ignoring unusable profile for device class %s", device_class)
                continue
            usable[device_class] = measured
        factors = {c: default_speed_factor(c) for c in usable}
        factors.update(speed_factors or {})
        return cls._fitted(graph, usable, factors, tuple(extra_samples))

    @classmethod
    def _fitted(cls, graph: ModelGraph, profiles: Mapping[str, MeasuredProfile], factors: Mapping[str, float],
                extra: tuple[Sample, ...]) -> CostModel:
        samples = list(extra)
        for device_class, profile in profiles.items():
            samples += profile_samples(graph, profile, factors.get(device_class, 1.0))
        return cls(graph, dict(profiles), dict(factors), fit_regression(samples), extra)

    def with_speed_factors(self, factors: Mapping[str, float]) -> CostModel:
        """The same profiles normalised with the given speed factors (refitted only on a change)."""
        merged = {**self.speed_factors, **{c: float(f) for c, f in factors.items() if c in self.profiles}}
        if merged == dict(self.speed_factors):
            return self
        return self._fitted(self.graph, self.profiles, merged, self.extra_samples)

    def samples(self) -> list[Sample]:
        """Every regression sample this model was fitted on (for reuse with other models)."""
        out = list(self.extra_samples)
        for device_class, profile in self.profiles.items():
            out += profile_samples(self.graph, profile, self.speed_factors.get(device_class, 1.0))
        return out

    def op_times(self, graph: ModelGraph, device_class: str, speed_factor: float) -> tuple[OpTimes, str]:
        """Per-op times with the measured mask and the source (``profile`` or ``regression``)."""
        estimate = self.regression.predict(graph, speed_factor)
        profile = self.profiles.get(device_class) if device_class else None
        if profile is not None:
            return attribute(graph, profile.op_ms, estimate, profile.total_ms), SOURCE_PROFILE
        return OpTimes(estimate, np.zeros(len(graph.ops), dtype=bool)), SOURCE_REGRESSION

    def op_ms(self, graph: ModelGraph, device_class: str, speed_factor: float) -> tuple[np.ndarray, str]:
        """``(ms per op, shape (n_ops,), source)`` for ``graph`` on a device of that class and speed."""
        times, source = self.op_times(graph, device_class, speed_factor)
        return times.ms, source


def profile_samples(graph: ModelGraph, profile: MeasuredProfile, speed_factor: float) -> list[Sample]:
    """Regression samples from one profile: its ops' times (scaled to the run's total like a
    profile row), fused groups split by a FLOPs/bytes proxy (the regression cannot be used to
    split the data it is fitted on); estimated ops are left out."""
    proxy = np.array([op.flops + op.param_bytes + op.output_bytes + 1.0 for op in graph.ops], dtype=float)
    times = attribute(graph, profile.op_ms, proxy, profile.total_ms)
    return samples_from_times(graph, times.ms, speed_factor, times.measured)
