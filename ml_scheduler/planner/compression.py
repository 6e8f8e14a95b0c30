"""Boundary compression: which cut links of a plan send compressed tensors, and what that saves.

Why: on a slow uplink (a Raspberry Pi's 50 Mbit/s) the tensors crossing a cut can cost more than
the compute on either side; sending them as fp16 halves the transfer, int8 with a per-tensor
scale (:mod:`treeline_common.tensor_codec`) quarters it, at some cost in accuracy. Compression is
worth that cost only where the link is what limits the plan, so it is chosen per plan, after
the DP, never by default.

Rule (:func:`bottleneck_edges`). A cut edge is stage ``j -> j+1`` on two distinct devices, with
transfer ``T_j = rtt + cut_bytes[p_{j+1}] / bandwidth`` (ms) and the compute ``C_j``, ``C_{j+1}``
of the stages on either side. It is a *bottleneck link*

- for ``objective == "throughput"``: when ``T_j`` is the plan's bottleneck, i.e. ``T_j`` equals the
  largest compute or transfer term (``Plan.bottleneck_ms``; ties all count), so shrinking it
  raises the plan's throughput;
- for ``objective == "latency"``: when ``T_j > C_j`` and ``T_j > C_{j+1}``, i.e. the request spends
  longer on that wire than on the compute of either neighbour.

The transfer of the raw input (source -> stage 0) and of the answer are not cut edges and are
never compressed. Codec: the allowed one that sends the fewest bytes first (``int8`` before
``fp16``); the cluster measures each codec's effect on the model's outputs and falls back in that
order (cluster_orchestrator.compression). For each codec, the plan is re-evaluated with the
compressed bytes on those edges (fp16: ``cut / 2``; int8: ``cut / 4 + 4``; :func:`evaluate`
charges them, so predictions and the emulated links agree). The cuts and devices stay those the
DP chose on uncompressed bytes: compression is a post-pass, which keeps the DP exact for its own
problem and the choice explainable. The CPU time of encoding (about a millisecond per MB) is
not charged.

Pure: numpy only, no I/O.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ml_scheduler.problem import Plan, PlanningProblem, evaluate
from treeline_common.tensor_codec import CODECS, FP16, INT8, NONE, check_codec, encoded_bytes

PREFERENCE = (INT8, FP16)  # fewest bytes first
_TIE = 1e-9  # relative tolerance of "equals the bottleneck"


@dataclass(frozen=True)
class CutEdge:
    """The link after stage ``stage`` (sender) to stage ``stage + 1``, cutting at op ``position``."""

    stage: int
    position: int
    sender: int  # device index
    receiver: int
    bytes_before: float
    transfer_ms: float


@dataclass(frozen=True)
class CompressionProposal:
    """Bottleneck edges of a plan and the plan under each allowed codec (``""``: uncompressed).

    ``codecs`` are the allowed codecs in the order to try (:data:`PREFERENCE`); ``plans[codec]``
    is the plan with that codec on every edge of ``edges``.
    """

    edges: tuple[CutEdge, ...]
    codecs: tuple[str, ...]
    plans: dict[str, Plan]

    def bytes_after(self, codec: str) -> list[float]:
        """Compressed bytes of each edge under ``codec``."""
        return [encoded_bytes(e.bytes_before, codec) for e in self.edges]

    def ms_saved(self, codec: str) -> float:
        """Predicted ms the codec saves: on the bottleneck (throughput) or end to end (latency)."""
        before, after = self.plans[NONE], self.plans[codec]
        return before.cost - after.cost


def cut_edges(problem: PlanningProblem, plan: Plan) -> list[CutEdge]:
    """Every stage boundary of ``plan`` between two distinct devices (transfer as charged)."""
    edges = []
    for before, after in zip(plan.stages, plan.stages[1:], strict=False):
        if before.device != after.device:
            edges.append(CutEdge(before.index, after.start, before.device, after.device,
                                 float(problem.cut_bytes[after.start]), after.transfer_in_ms))
    return edges


def bottleneck_edges(problem: PlanningProblem, plan: Plan) -> list[CutEdge]:
    """The cut edges that limit ``plan`` under its objective (the rule of the module docstring)."""
    compute = {s.index: s.compute_ms for s in plan.stages}
    found = []
    for edge in cut_edges(problem, plan):
        if edge.transfer_ms <= 0.0:
            continue
        if plan.objective == "throughput":
            limiting = edge.transfer_ms >= plan.bottleneck_ms * (1.0 - _TIE)
        else:
            limiting = edge.transfer_ms > max(compute[edge.stage], compute[edge.stage + 1])
        if limiting:
            found.append(edge)
    return found


def with_compression(problem: PlanningProblem, positions: Sequence[int], codec: str) -> PlanningProblem:
    """``problem`` with the bytes crossing each cut in ``positions`` compressed by ``codec``."""
    check_codec(codec)
    cut = np.asarray(problem.cut_bytes, dtype=np.float64).copy()
    for p in set(positions):
        cut[p] = encoded_bytes(float(cut[p]), codec)
    return dataclasses.replace(problem, cut_bytes=cut)


def propose(problem: PlanningProblem, plan: Plan, allowed: Sequence[str]) -> CompressionProposal | None:
    """The compression proposal for ``plan``, or None when the SLA allows no codec or no cut edge
    is a bottleneck link. ValueError for a codec name outside :data:`~treeline_common.tensor_codec.CODECS`."""
    for codec in allowed:
        check_codec(codec)
    codecs = tuple(c for c in PREFERENCE if c in allowed and c in CODECS)
    edges = tuple(bottleneck_edges(problem, plan)) if codecs else ()
    if not edges:
        return None
    plans = {NONE: plan}
    positions = [e.position for e in edges]
    for codec in codecs:
        evaluated = evaluate(with_compression(problem, positions, codec), plan.positions, plan.devices)
        if evaluated is None:  # the same ranges and devices: feasibility does not depend on cut bytes
            raise AssertionError("a plan became infeasible by sending fewer bytes")
        plans[codec] = dataclasses.replace(evaluated, notes=plan.notes)
    return CompressionProposal(edges, codecs, plans)


def proposal_document(problem: PlanningProblem, plan: Plan, allowed: Sequence[str],
                      summary: Callable[[Plan], dict[str, Any]]) -> dict[str, Any] | None:
    """:func:`propose` as a JSON-able document for whoever measures the codecs' effect (the cluster):
    ``{"edges": [{stage, position, from, to, bytes_before, transfer_ms}], "codecs": [...],
    "options": {codec: {"predicted": summary(plan), "bytes_after": [...], "predicted_ms_saved"}}}``,
    the ``""`` option being the uncompressed plan; None when nothing is proposed."""
    proposal = propose(problem, plan, allowed)
    if proposal is None:
        return None
    edges = [{"stage": e.stage, "position": e.position, "from": problem.device_ids[e.sender],
              "to": problem.device_ids[e.receiver], "bytes_before": int(e.bytes_before),
              "transfer_ms": round(e.transfer_ms, 4)} for e in proposal.edges]
    options = {codec: {"predicted": summary(p), "bytes_after": [int(b) for b in proposal.bytes_after(codec)],
                       "predicted_ms_saved": round(proposal.ms_saved(codec), 4)}
               for codec, p in proposal.plans.items()}
    return {"edges": edges, "codecs": list(proposal.codecs), "options": options}
