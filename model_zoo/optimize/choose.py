"""Which variant to deploy per device class: the fastest one whose quality clears the floor.

Pure: no clock, no onnxruntime. Inputs are measured figures; the rule is

    eligible = {v : v.quality >= accuracy_floor}
    chosen   = argmin over eligible of p50_ms (ties: smaller size, then name)
    speedup  = baseline.p50_ms / chosen.p50_ms

``quality`` is accuracy on held-out data or top-1 agreement with the baseline, in [0, 1]. When
no variant is eligible the choice says so (``variant`` None, every reason listed): a result,
not an exception. Every variant not chosen keeps its reason (:data:`BELOW_FLOOR`,
:data:`SLOWER`).

Device classes: latency is measured on this CPU only. An *emulated* class (a profile in
``treeline_common.profiles`` with a ``speed_factor``) gets the host's p50 divided by its speed
factor, exactly as a node engine emulating it would wait. The factor is the same for every
variant, so an emulated class picks the variant this CPU picks; its figures are scaled, not
measured, and :class:`Choice` carries ``emulated=True`` to say so.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

BELOW_FLOOR = "below_accuracy_floor"
SLOWER = "slower_than_chosen"


@dataclass(frozen=True)
class Candidate:
    """One variant's measured figures on one device class (ms, bytes, quality in [0, 1])."""

    name: str
    quality: float
    p50_ms: float
    size_bytes: int


@dataclass(frozen=True)
class DeviceClass:
    """Where latency comes from: measured here (speed_factor 1, not emulated) or scaled."""

    name: str
    speed_factor: float
    emulated: bool


@dataclass(frozen=True)
class Choice:
    """The decision for one device class, with a reason for every variant not chosen."""

    device_class: str
    variant: str | None
    p50_ms: float | None
    speedup: float | None
    baseline: str
    accuracy_floor: float
    emulated: bool
    rejected: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        """JSON-ready form (what the benchmark and the CLI report)."""
        return {"device_class": self.device_class, "chosen_variant": self.variant, "p50_ms": self.p50_ms,
                "speedup": self.speedup, "baseline": self.baseline, "accuracy_floor": self.accuracy_floor,
                "emulated": self.emulated, "rejected": dict(self.rejected)}


def choose_variant(candidates: Sequence[Candidate], *, baseline: str, accuracy_floor: float,
                   device_class: str = "host", emulated: bool = False) -> Choice:
    """Apply the rule of the module docstring. Raises ValueError when ``baseline`` is not among
    ``candidates`` or a p50 is not positive (a speedup needs both)."""
    by_name = {c.name: c for c in candidates}
    if baseline not in by_name:
        raise ValueError(f"baseline: {baseline!r} is not among the candidates {sorted(by_name)}")
    if any(c.p50_ms <= 0 for c in candidates):
        raise ValueError("p50_ms: every candidate needs a positive latency")
    rejected = {c.name: BELOW_FLOOR for c in candidates if c.quality < accuracy_floor}
    eligible = sorted((c for c in candidates if c.name not in rejected),
                      key=lambda c: (c.p50_ms, c.size_bytes, c.name))
    if not eligible:
        return Choice(device_class, None, None, None, baseline, accuracy_floor, emulated, rejected)
    chosen = eligible[0]
    rejected.update({c.name: SLOWER for c in eligible[1:]})
    return Choice(device_class, chosen.name, chosen.p50_ms, by_name[baseline].p50_ms / chosen.p50_ms,
                  baseline, accuracy_floor, emulated, rejected)


def scale(candidates: Iterable[Candidate], speed_factor: float) -> list[Candidate]:
    """Host figures as an emulated device at ``speed_factor`` (> 0) would show them."""
    if speed_factor <= 0:
        raise ValueError(f"speed_factor: must be > 0, got {speed_factor}")
    return [Candidate(c.name, c.quality, c.p50_ms / speed_factor, c.size_bytes) for c in candidates]


def choose_per_device_class(host: Sequence[Candidate], classes: Iterable[DeviceClass], *, baseline: str,
                            accuracy_floor: float) -> dict[str, Choice]:
    """One :class:`Choice` per device class; emulated classes from the host's figures, scaled."""
    return {dc.name: choose_variant(scale(host, dc.speed_factor) if dc.emulated else list(host),
                                    baseline=baseline, accuracy_floor=accuracy_floor,
                                    device_class=dc.name, emulated=dc.emulated)
            for dc in classes}
