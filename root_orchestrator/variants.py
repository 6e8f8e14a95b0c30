"""Which optimised variant of a model version to deploy: the fastest measured one that keeps the
SLA's ``accuracy_floor`` and is among the SLA's ``variants`` (pure).

Variants are versions of the same model derived from the version the SLA names (``lineage.parent``)
and tagged ``optimize.variant`` (``int8``, ``fp16``, ``pruned``, ``distilled``: what ``treeline
model optimize`` registers, :mod:`model_zoo.optimize.publish`), with measured ``metrics``:
``quality`` (``accuracy`` or ``agreement``) and ``latency/<device class>`` (``p50_ms``). The named
version itself is the ``fp32`` candidate.

Rule (:func:`choose_variant`): candidates are the named version and its derived variants whose kind
the SLA allows; a candidate whose quality is known and below the floor is out (the named version
stays in: it is what the user asked for). Among the rest, the lowest ``p50_ms`` measured on the
target device class wins; when not every candidate was measured there, the device class they
were all measured on is used instead (and said so); with no common measurement the named version
is kept. Nothing is assumed: an unmeasured variant is never chosen. The explanation lists every
candidate with its figures and why it lost.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

VARIANT_TAG = "optimize.variant"
BASELINE = "fp32"


def _kind(version: Mapping[str, Any]) -> str:
    return str((version.get("tags") or {}).get(VARIANT_TAG) or BASELINE)


def _quality(version: Mapping[str, Any]) -> float | None:
    quality = (version.get("metrics") or {}).get("quality") or {}
    for key in ("accuracy", "agreement"):
        value = quality.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    return None


def _latencies(version: Mapping[str, Any]) -> dict[str, float]:
    found = {}
    for key, value in (version.get("metrics") or {}).items():
        if key.startswith("latency/") and isinstance(value, Mapping):
            p50 = value.get("p50_ms")
            if isinstance(p50, int | float) and not isinstance(p50, bool):
                found[key.removeprefix("latency/")] = float(p50)
    return found


def _parent(version: Mapping[str, Any]) -> Mapping[str, Any]:
    return (version.get("lineage") or {}).get("parent") or {}


def derived_from(versions: Iterable[Mapping[str, Any]], base: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The versions whose lineage parent is ``base`` (same model name)."""
    return [v for v in versions if _parent(v).get("name") == base.get("name")
            and int(_parent(v).get("version") or 0) == int(base["version"])]


def _row(version: Mapping[str, Any], kind: str) -> dict[str, Any]:
    return {"version": int(version["version"]), "variant": kind, "quality": _quality(version),
            "p50_ms": _latencies(version)}


def choose_variant(base: Mapping[str, Any], variants: Sequence[Mapping[str, Any]], allowed: Sequence[str],
                   accuracy_floor: float,
                   device_class: str | None) -> tuple[Mapping[str, Any], dict[str, Any]]:
    """``(the version to deploy, the explanation)`` (see the module docstring). ``variants`` are the
    versions derived from ``base``; ``allowed`` the SLA's ``variants``; ``device_class`` the class
    the deployment is expected to run on (None: unknown)."""
    candidates: list[Mapping[str, Any]] = [base]
    rows = [_row(base, BASELINE)]
    for version in variants:
        kind = _kind(version)
        row = _row(version, kind)
        rows.append(row)
        quality = _quality(version)
        if kind not in allowed:
            row["out"] = f"{kind} is not among the SLA's variants {list(allowed)}"
        elif quality is not None and quality < accuracy_floor:
            row["out"] = f"quality {quality:.4f} below the accuracy floor {accuracy_floor:.4f}"
        else:
            candidates.append(version)
    explanation: dict[str, Any] = {"named": int(base["version"]), "device_class": device_class,
                                   "accuracy_floor": accuracy_floor, "candidates": rows}
    if len(candidates) == 1:
        return base, {**explanation, "chosen": int(base["version"]),
                      "why": "no allowed variant above the floor"}
    measured = [_latencies(c) for c in candidates]
    common = set.intersection(*(set(m) for m in measured))
    measured_on = device_class if device_class in common else (sorted(common)[0] if common else None)
    if measured_on is None:
        return base, {**explanation, "chosen": int(base["version"]),
                      "why": "the candidates share no device class they were all measured on"}
    best = min(range(len(candidates)), key=lambda i: (measured[i][measured_on], i))
    chosen = candidates[best]
    note = "" if measured_on == device_class else f" (not measured on {device_class}: on {measured_on})"
    fastest = measured[best][measured_on]
    speedup = measured[0][measured_on] / fastest if fastest > 0 else 1.0
    return chosen, {**explanation, "chosen": int(chosen["version"]), "measured_on": measured_on,
                    "speedup": round(speedup, 3),
                    "why": f"{_kind(chosen)} is the fastest allowed variant above the floor{note}"}


def fleet_device_class(clusters: Iterable[Mapping[str, Any]]) -> str | None:
    """The device class a plan will most likely use: the best one the active clusters report
    (``aggregate.best_device_class`` of the cluster with the highest ``best_speed_factor``)."""
    best: tuple[float, str] | None = None
    for cluster in clusters:
        aggregate = cluster.get("aggregate") or {}
        name, speed = aggregate.get("best_device_class"), aggregate.get("best_speed_factor")
        if isinstance(name, str) and name and isinstance(speed, int | float) \
                and (best is None or float(speed) > best[0]):
            best = (float(speed), name)
    return best[1] if best else None
