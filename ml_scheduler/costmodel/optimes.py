"""Mapping a measured profile (ms per ONNX node name) onto ``graph.ops``.

Why this is not a dictionary lookup: onnxruntime serves the *optimised* graph. With the
default optimisation level it fuses ops (``Conv`` + ``Clip`` become one NCHWc kernel named
after the fused output; ``Conv`` + ``Add`` likewise), so a profile has one time for several
graph ops and no entry for the ones fused away. The node engine already names each kernel
after the ONNX node that produces the kernel's output (see :mod:`node_engine.profiling`);
here the time is spread back over the ops it covers. Rules, in order:

1. An op found in the profile is *measured*.
2. An op not found whose outputs all feed exactly one op (and are not graph outputs) was
   most likely fused into that consumer: it joins the consumer's *group* (following chains
   of up to :data:`MAX_FUSED_CHAIN` missing ops, the longest fusion onnxruntime does, e.g.
   Conv + BatchNorm + Add + Relu). The head's measured time is split over the group in proportion to the
   ops' ``weights`` (the regression estimate), so the group still sums to what was measured.
3. Any other missing op gets its weight scaled by ``k = sum(measured ms) / sum(weights of
   measured ops)``: the regression estimate calibrated to this profile's total, so an
   estimate for one device class is never off by the device's speed.
4. With the profile's ``total_ms`` (median wall time of a whole run) known, every time is
   scaled so the ops sum to it: the per-run overhead the kernels do not show (executor, layout
   reorders, the Python binding) is paid by every stage too, so it is spread over the ops in
   proportion rather than dropped (MobileNetV2: ~8% of a run).

Profile keys that name no op are ignored. Pure: numpy only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from ml_scheduler.graph import ModelGraph

MAX_FUSED_CHAIN = 3


@dataclass(frozen=True, eq=False)
class OpTimes:
    """Per-op ms of one model on one device class, aligned with ``graph.ops``.

    ``measured[i]`` is True when op ``i``'s time came (wholly or as a fused group's share)
    from the profile, False when it is a calibrated regression estimate.
    """

    ms: np.ndarray  # (n_ops,)
    measured: np.ndarray  # (n_ops,) bool
    total_ms: float = 0.0  # the profile's end-to-end median, for reference

    @property
    def coverage(self) -> float:
        """Fraction of ops whose time derives from the profile."""
        return float(self.measured.mean()) if len(self.measured) else 0.0


def fusion_heads(graph: ModelGraph, present: set[str]) -> dict[int, int]:
    """``{missing op index: index of the measured op it was fused into}`` (rule 2)."""
    consumers: dict[str, list[int]] = {}
    for index, op in enumerate(graph.ops):
        for tensor in set(op.inputs):
            if tensor and tensor not in graph.static_tensors:
                consumers.setdefault(tensor, []).append(index)
    outputs = set(graph.output_names)

    def single_consumer(i: int) -> int | None:
        targets: set[int] = set()
        for tensor in graph.ops[i].outputs:
            if not tensor:
                continue
            if tensor in outputs:
                return None
            targets.update(consumers.get(tensor, ()))
        return next(iter(targets)) if len(targets) == 1 else None

    heads: dict[int, int] = {}
    for i, op in enumerate(graph.ops):
        if op.name in present:
            continue
        head, hops = single_consumer(i), 0
        while head is not None and graph.ops[head].name not in present and hops < MAX_FUSED_CHAIN:
            head, hops = single_consumer(head), hops + 1
        if head is not None and graph.ops[head].name in present:
            heads[i] = head
    return heads


def attribute(graph: ModelGraph, op_ms: Mapping[str, float], weights: np.ndarray,
              total_ms: float = 0.0) -> OpTimes:
    """Per-op times from a profile's ``op_ms`` (rules in the module docstring).

    ``weights`` are relative per-op cost estimates for this device (the regression's
    prediction); non-positive weights are lifted to a tiny epsilon so every op gets a share.
    """
    n = len(graph.ops)
    w = np.maximum(np.asarray(weights, dtype=float), 1e-9)
    present = {name for name, value in op_ms.items() if _valid(value)}
    ms = np.zeros(n)
    measured = np.zeros(n, dtype=bool)
    for i, op in enumerate(graph.ops):
        if op.name in present:
            ms[i] = float(op_ms[op.name])
            measured[i] = True
    heads = fusion_heads(graph, present)
    groups: dict[int, list[int]] = {}
    for i, head in heads.items():
        groups.setdefault(head, [head]).append(i)
    for head, members in groups.items():
        share = w[members] / w[members].sum()
        ms[members] = ms[head] * share
        measured[members] = True
    rest = [i for i in range(n) if not measured[i]]
    if rest:
        direct = [i for i in range(n) if measured[i]]
        k = ms[direct].sum() / w[direct].sum() if direct and w[direct].sum() > 0 else 1.0
        ms[rest] = w[rest] * k
    if total_ms > 0 and ms.sum() > 0:
        ms *= total_ms / ms.sum()
    return OpTimes(ms, measured, float(total_ms))


def _valid(value: object) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and bool(np.isfinite(value)) and value >= 0)
