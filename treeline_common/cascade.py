"""Confidence cascades: a small model at the edge answers, or escalates to the large one (pure).

An SLA's ``model.cascade`` block (``deployment_descriptors``' schema) asks for two models:
the small one runs whole on one edge node, the large one (the model block's own model) is
planned like any model. Per request the edge computes a *confidence* on the small model's
outputs; at or above the *threshold* it answers, otherwise it forwards the ORIGINAL inputs to
the large model's entry and the large model's answer goes back to the caller (the edge is
the request's entry, so that answer comes straight back on the data plane's ``reply_to``
path). With ``accuracy_floor`` instead of ``threshold`` the root calibrates the threshold on
a probe set (:func:`calibrate`).

Contracts defined once here:

- :class:`CascadeSpec`: the SLA block, read and checked (:meth:`CascadeSpec.from_sla`);
- :class:`CascadeJob`: what the root sends the cluster with the job (the small model resolved
  to a registry version and digest, the threshold to use, the calibration's figures);
- :class:`EdgeRule`: what a node needs per request (threshold and confidence rule), built from
  a :class:`~treeline_common.messages.DeployCommand`'s ``cascade_*`` fields;
- the answer's timings carry :data:`ESCALATED_TIMING` (1.0 escalated, 0.0 answered at the edge)
  and :data:`CONFIDENCE_TIMING` (the edge's confidence), so callers can count the escalated share.

Confidence (:func:`confidence`): ``softmax_top1`` is the largest softmax probability of the
small model's first output along its last axis, per row; ``output:<name>`` reads a declared
output (values in 0..1). With a batch, the request's confidence is its *least* confident row
(one uncertain row escalates the whole request, so every row's answer meets the rule).
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from treeline_common.messages import DeployCommand, NextStage

SOFTMAX_TOP1 = "softmax_top1"
OUTPUT_PREFIX = "output:"
ESCALATED_TIMING = "cascade:escalated"  # answer timings: 1.0 escalated to the large model, 0.0 not
CONFIDENCE_TIMING = "cascade:confidence"  # answer timings: the edge's confidence (0..1)
PROBE_SETS = ("digits", "sample_images")

_NAME = r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}"
_MODEL_REF = re.compile(rf"(?P<name>{_NAME})(:(?P<version>{_NAME}))?")
_CONFIDENCE = re.compile(r"softmax_top1|output:[A-Za-z0-9_.:/-]{1,128}")
CONFIDENCE_RULE = {"pattern": f"({_CONFIDENCE.pattern})?",
                   "pattern_message": "must be 'softmax_top1', 'output:<name>' or empty"}
UNIT = {"min": 0.0, "max": 1.0}


class CascadeError(ValueError):
    """A cascade block that cannot be used; ``path`` names the field (relative to ``model``)."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
        self.message = message


def parse_model_ref(text: str, path: str) -> tuple[str, int | str | None]:
    """``"name"`` -> ``(name, None)``; ``"name:3"`` -> ``(name, 3)``; ``"name:prod"`` -> alias.

    CascadeError naming ``path`` when ``text`` is not ``name[:version]``.
    """
    match = _MODEL_REF.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        raise CascadeError(path, f"must be a registry model as name or name:version, got {str(text)[:80]!r}")
    version = match["version"]
    if version is None:
        return match["name"], None
    return match["name"], int(version) if version.isdigit() else version


@dataclass(frozen=True)
class CascadeSpec:
    """The SLA's ``model.cascade`` block, defaults applied (see the module docstring)."""

    small_name: str
    small_version: int | str
    threshold: float | None
    accuracy_floor: float | None
    confidence: str = SOFTMAX_TOP1
    probe: str = "digits"
    edge: dict[str, str] | None = None  # {"node": name} | {"label": label}; None: model.source, else auto

    @classmethod
    def from_sla(cls, model: Mapping[str, Any]) -> CascadeSpec | None:
        """The block of an SLA ``model`` mapping (None when it has none); CascadeError on a bad one.

        Rules a schema cannot state: exactly one of ``threshold`` / ``accuracy_floor``; ``large``,
        when given, names the model block's own model (name, and its version when it names one).
        """
        block = model.get("cascade")
        if block is None:
            return None
        if not isinstance(block, Mapping):
            raise CascadeError("cascade", "must be an object")
        small_name, small_version = parse_model_ref(block.get("small", ""), "cascade.small")
        if "large" in block:
            large_name, large_version = parse_model_ref(block["large"], "cascade.large")
            own_version = model.get("version", "latest")
            other_version = large_version is not None and large_version != own_version
            if large_name != model.get("name") or other_version:
                raise CascadeError("cascade.large", f"must be this model block's model "
                                   f"{model.get('name')}:{own_version} (or left out), got {block['large']!r}")
        threshold, floor = block.get("threshold"), block.get("accuracy_floor")
        if (threshold is None) == (floor is None):
            raise CascadeError("cascade", "needs exactly one of 'threshold' or 'accuracy_floor', got "
                               + ("both" if threshold is not None else "neither"))
        for key, value in (("threshold", threshold), ("accuracy_floor", floor)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)
                                      or not 0.0 <= float(value) <= 1.0):
                raise CascadeError(f"cascade.{key}", f"must be a number in 0..1, got {value!r}")
        how = str(block.get("confidence", SOFTMAX_TOP1))
        if not _CONFIDENCE.fullmatch(how):
            raise CascadeError("cascade.confidence",
                               f"must be softmax_top1 or output:<name>, got {how[:80]!r}")
        probe = str(block.get("probe", "digits"))
        if probe not in PROBE_SETS:
            raise CascadeError("cascade.probe", f"must be one of {', '.join(PROBE_SETS)}, got {probe[:80]!r}")
        edge = block.get("edge")
        return cls(small_name, small_version if small_version is not None else "latest",
                   float(threshold) if threshold is not None else None,
                   float(floor) if floor is not None else None, how, probe,
                   {str(k): str(v) for k, v in edge.items()} if isinstance(edge, Mapping) else None)


@dataclass(frozen=True)
class CascadeJob:
    """Root -> cluster, inside the job: the small model resolved and the threshold to apply.

    ``threshold`` is the SLA's, or the one calibrated for its ``accuracy_floor`` (then
    ``calibration`` carries :meth:`Calibration.to_dict`). ``edge``: the SLA's node selector.
    """

    small_name: str
    small_version: int = field(metadata={"min": 1})
    small_sha256: str = field(metadata={"pattern": "[0-9a-fA-F]{64}",
                                        "pattern_message": "must be 64 hex digits"})
    threshold: float = field(metadata=UNIT)
    confidence: str = field(default=SOFTMAX_TOP1, metadata=CONFIDENCE_RULE)
    edge: dict[str, str] | None = None
    calibration: dict[str, Any] | None = None


@dataclass(frozen=True)
class EdgeRule:
    """What the edge stage applies per request: escalate iff confidence < ``threshold``."""

    threshold: float = field(metadata=UNIT)
    confidence: str = field(default=SOFTMAX_TOP1, metadata=CONFIDENCE_RULE)

    def escalates(self, outputs: Mapping[str, np.ndarray]) -> tuple[bool, float]:
        """``(escalate?, confidence)`` for the small model's ``outputs`` (see :func:`confidence`)."""
        value = confidence(outputs, self.confidence)
        return value < self.threshold, value


def softmax_top1(logits: np.ndarray) -> np.ndarray:
    """The top-1 softmax probability of each row (last axis), numerically stable; shape ``logits.shape[:-1]``.

    A 0-d or 1-element last axis has confidence 1.0 (one class).
    """
    x = np.asarray(logits, dtype=np.float64)
    if x.ndim == 0 or x.shape[-1] <= 1:
        return np.ones(x.shape[:-1] if x.ndim else (), dtype=np.float64)
    shifted = x - x.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    result: np.ndarray = 1.0 / exp.sum(axis=-1)  # the top entry's exp is exp(0) = 1
    return result


def confidence(outputs: Mapping[str, np.ndarray], how: str = SOFTMAX_TOP1) -> float:
    """The request's confidence in 0..1: the least confident row (module docstring).

    ``softmax_top1`` reads the first output (the model's declared order); ``output:<name>``
    that output's values. ValueError when the named output is missing, an output is empty,
    or it holds NaN (a broken model must not pass as confident).
    """
    if not outputs:
        raise ValueError("confidence: the small model produced no outputs")
    if how.startswith(OUTPUT_PREFIX):
        name = how[len(OUTPUT_PREFIX):]
        if name not in outputs:
            raise ValueError(f"confidence: no output {name!r} (outputs: {', '.join(outputs)})")
        values = np.asarray(outputs[name], dtype=np.float64)
    elif how == SOFTMAX_TOP1:
        values = softmax_top1(next(iter(outputs.values())))
    else:
        raise ValueError(f"confidence: unknown rule {how!r}")
    if values.size == 0:
        raise ValueError("confidence: empty output")
    least = float(values.min())
    if math.isnan(least):
        raise ValueError("confidence: NaN in the small model's output")
    return min(1.0, max(0.0, least))


@dataclass(frozen=True)
class Calibration:
    """The threshold chosen for an accuracy floor, with what it is expected to give on the probe set."""

    threshold: float
    floor: float
    met: bool  # False: not even escalating everything reaches the floor
    accuracy: float  # cascade accuracy on the probe set at ``threshold``
    escalated_share: float
    small_accuracy: float
    large_accuracy: float
    probe_size: int
    reference: str  # "labels" | "large model" (what "correct" means)
    expected_mean_ms: float | None = None  # small_ms + share * escalation_ms, when timings were given

    def to_dict(self) -> dict[str, Any]:
        """The figures as JSON; floats rounded to 6 digits except the threshold (applied as is)."""
        return {k: (round(v, 6) if isinstance(v, float) and k != "threshold" else v)
                for k, v in self.__dict__.items()}


def cascade_accuracy(conf: np.ndarray, small_correct: np.ndarray, large_correct: np.ndarray,
                     threshold: float) -> tuple[float, float]:
    """``(accuracy, escalated share)`` of the cascade at ``threshold`` on a probe set (arrays of length n)."""
    escalated = np.asarray(conf) < threshold
    correct = np.where(escalated, large_correct, small_correct)
    return float(np.mean(correct)), float(np.mean(escalated))


def calibrate(conf: Sequence[float] | np.ndarray, small_correct: Sequence[bool] | np.ndarray,
              large_correct: Sequence[bool] | np.ndarray, floor: float, *, reference: str = "labels",
              small_ms: float | None = None, escalation_ms: float | None = None) -> Calibration:
    """The lowest threshold whose cascade accuracy on the probe set is at least ``floor``.

    Inputs, one entry per probe example: the small model's confidence, whether the small and
    the large model answered it correctly. Candidates are 0 (never escalate), the points midway
    between neighbouring distinct confidences (escalate the examples below), then 1.0
    (escalate all but the fully certain): the escalated set, and with it the mean latency
    ``small_ms + share * escalation_ms``, grows with the threshold, so the lowest threshold that
    meets the floor is also the fastest one that does. Not met even at 1.0: ``met`` False and
    threshold 1.0. ValueError on empty or unequal inputs.
    """
    c = np.asarray(conf, dtype=np.float64)
    s = np.asarray(small_correct, dtype=bool)
    large = np.asarray(large_correct, dtype=bool)
    if c.size == 0 or not c.shape == s.shape == large.shape:
        raise ValueError(f"calibrate: need equal, non-empty arrays, got {c.shape}, {s.shape}, {large.shape}")
    seen = sorted({min(1.0, max(0.0, float(v))) for v in c})
    # midway between neighbouring confidences: the same escalated set as the upper one, with a
    # margin either side (a node's float noise must not flip the probe's boundary examples)
    candidates = [0.0, *((a + b) / 2.0 for a, b in itertools.pairwise(seen)),
                  *([(seen[-1] + 1.0) / 2.0] if seen[-1] < 1.0 else []), 1.0]
    chosen, met = 1.0, False
    for threshold in candidates:
        if cascade_accuracy(c, s, large, threshold)[0] >= floor - 1e-12:
            chosen, met = threshold, True
            break
    accuracy, share = cascade_accuracy(c, s, large, chosen)
    expected = None
    if small_ms is not None and escalation_ms is not None:
        expected = small_ms + share * escalation_ms
    return Calibration(threshold=chosen, floor=floor, met=met,
                       accuracy=accuracy, escalated_share=share, small_accuracy=float(np.mean(s)),
                       large_accuracy=float(np.mean(large)), probe_size=int(c.size), reference=reference,
                       expected_mean_ms=expected)


CASCADE_STAGE = 900  # stage index of the cascade's edge stage (the large model's stages are 0..15)


@dataclass(frozen=True)
class Escalation:
    """A node's view of an edge stage: the rule and where uncertain requests go (the large entry)."""

    rule: EdgeRule
    to: NextStage

    @classmethod
    def of_command(cls, cmd: DeployCommand) -> Escalation | None:
        """The escalation a deploy command asks for (None when it has no ``escalate_to``)."""
        if cmd.escalate_to is None:
            return None
        return cls(EdgeRule(cmd.cascade_threshold, cmd.cascade_confidence or SOFTMAX_TOP1), cmd.escalate_to)
