"""The ML scheduling cycle: filter -> score -> shortlist -> exact plan -> explanation.

``MlScheduler.schedule`` is pure and deterministic: it reads a frozen snapshot, the model's
graph, the SLA microservice and a cost model, and returns a :class:`ScheduleResult` — a
plan with its predicted stage times, latency, throughput and energy, or "unschedulable"
with the reason for every node. It never raises for an impossible request (decide, then
commit: the cluster orchestrator applies the result).

Strategies (named in the scheduler profile): ``optimal`` (exact DP over the shortlist),
and the baselines it is measured against, ``flops-balanced`` and ``amp4ec-greedy``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ml_scheduler.baselines.amp4ec import amp4ec_greedy
from ml_scheduler.costmodel import CostModel, build_problem
from ml_scheduler.costmodel.links import link_explanation
from ml_scheduler.energy import plan_within_energy
from ml_scheduler.framework import PlacementRequest, explain, run_filters_and_scores
from ml_scheduler.graph import ModelGraph
from ml_scheduler.planner import plan as exact_plan
from ml_scheduler.planner.compression import proposal_document
from ml_scheduler.problem import Plan, PlanningProblem, evaluate
from ml_scheduler.simple import SimpleScheduler
from ml_scheduler.snapshot import ClusterSnapshot, NodeView

log = logging.getLogger(__name__)

REASON_NOT_SELECTED = "not_selected"
REASON_SLA_LATENCY = "sla_latency"
REASON_SLA_ENERGY = "sla_energy"
REASON_NO_FEASIBLE_PLAN = "no_feasible_plan"


@dataclass(frozen=True)
class ScheduleResult:
    """Positions/nodes of the chosen plan, or why there is none, plus the explanation.

    ``node_ids[j]`` runs the range ending at ``positions[j]`` (``positions`` are interior
    cuts). ``source_node_id`` is where inputs arrive when the SLA names a source: if it is
    not ``node_ids[0]``, the cluster deploys a relay stage there.
    """

    schedulable: bool
    strategy: str
    positions: list[int] = field(default_factory=list)
    node_ids: list[str] = field(default_factory=list)
    reasons: dict[str, str] = field(default_factory=dict)
    message: str = ""
    predicted: dict[str, Any] = field(default_factory=dict)
    explanation: dict[str, Any] = field(default_factory=dict)
    source_node_id: str | None = None
    # boundary compression the planner proposes for the plan's bottleneck links (None: none);
    # see ml_scheduler.planner.compression.proposal_document; the cluster measures and decides
    compression: dict[str, Any] | None = None


def _matching(devices: ClusterSnapshot, selector: Any) -> int | None:
    """Index of the first device a NodeSelector matches, with the same rule the filters use
    (``NodeColumns.selector_mask``: node by name or id, else label)."""
    if selector is None:
        return None
    hits = np.flatnonzero(devices.columns().selector_mask(selector.node, selector.label))
    return int(hits[0]) if hits.size else None


def plan_summary(plan: Plan, problem: PlanningProblem) -> dict[str, Any]:
    """The predictions a plan carries, JSON-able."""
    return {
        "objective": problem.objective,
        "latency_ms": round(plan.latency_ms, 4),
        "bottleneck_ms": round(plan.bottleneck_ms, 4),
        "throughput_rps": round(plan.throughput_rps, 3),
        "energy_mj": round(plan.energy_mj, 4),
        "transfer_out_ms": round(plan.transfer_out_ms, 4),
        "stages": [
            {"index": s.index, "node_id": problem.device_ids[s.device], "start": s.start, "end": s.end,
             "compute_ms": round(s.compute_ms, 4), "transfer_in_ms": round(s.transfer_in_ms, 4),
             "memory_bytes": int(s.memory_bytes), "energy_mj": round(s.energy_mj, 4)}
            for s in plan.stages
        ],
    }


class MlScheduler:
    def __init__(self, profile: Any) -> None:
        self.profile = profile

    def schedule(
        self, graph: ModelGraph, snapshot: ClusterSnapshot, microservice: Any, cost_model: CostModel
    ) -> ScheduleResult:
        strategy = str(getattr(self.profile, "strategy", "optimal"))
        spec = microservice.model
        request = PlacementRequest.from_microservice(microservice, graph)
        shortlist = run_filters_and_scores(request, snapshot, self.profile,
                                           shortlist_size=int(getattr(self.profile, "shortlist_size", 8)))
        explanation = explain(shortlist)
        reasons = {node_id: f"{r[1]}: {r[2]}" for node_id, r in shortlist.rejected.items()}
        if not shortlist.shortlist:
            return ScheduleResult(False, strategy, reasons=reasons, explanation=explanation,
                                  message="no node passed the filters")
        by_id = {node.node_id: node for node in snapshot.nodes}
        devices = tuple(by_id[node_id] for node_id in shortlist.shortlist)
        constraints = microservice.ml_constraints
        shortlisted = ClusterSnapshot(devices)
        pin = _matching(shortlisted, constraints.privacy_pin)
        source = _matching(shortlisted, spec.source)
        if source is None and pin is not None:
            source = pin  # pinned data is, by definition, where the input arrives
        sink = _matching(shortlisted, spec.sink)
        problem = build_problem(graph, devices, cost_model, source_idx=source, sink_idx=sink,
                                max_partitions=int(spec.max_partitions), first_device=pin,
                                objective=spec.objective)
        chosen = self._plan(strategy, graph, problem, devices)
        budget = microservice.ml_constraints.energy_mj
        if (strategy == "optimal" and budget is not None and problem.objective == "latency"
                and chosen is not None and chosen.energy_mj > budget):
            chosen = plan_within_energy(problem, budget, exact_plan) or chosen
        if chosen is None:
            for node in devices:
                reasons.setdefault(node.node_id, f"{REASON_NO_FEASIBLE_PLAN}: no partitioning fits the "
                                                 "shortlisted nodes' memory and the pin")
            return ScheduleResult(False, strategy, reasons=reasons, explanation=explanation,
                                  message="no feasible partitioning on the shortlisted nodes")
        predicted = plan_summary(chosen, problem)
        explanation = {**explanation, "plan": predicted,  # and which link figures were measured:
                       "links": link_explanation(devices, [problem.device_ids[d] for d in chosen.devices])}
        violation = self._sla_violation(chosen, constraints)
        if violation is not None:
            code, message = violation
            for node in devices:
                reasons.setdefault(node.node_id, f"{code}: {message}")
            return ScheduleResult(False, strategy, reasons=reasons, explanation=explanation, message=message,
                                  predicted=predicted)
        used = {problem.device_ids[d] for d in chosen.devices}
        for node in devices:
            if node.node_id not in used:
                reasons[node.node_id] = (f"{REASON_NOT_SELECTED}: the {problem.objective}-optimal plan does "
                                         "not need it")
        explanation["filtered_or_unused"] = reasons
        explanation["node_names"] = {node_id: by_id[node_id].name for node_id in reasons if node_id in by_id}
        return ScheduleResult(
            True, strategy, positions=chosen.positions,
            node_ids=[problem.device_ids[d] for d in chosen.devices], reasons=reasons,
            predicted=predicted, explanation=explanation,
            source_node_id=problem.device_ids[source] if source is not None else None,
            compression=proposal_document(problem, chosen, constraints.compression_allow,
                                          lambda p: plan_summary(p, problem)),
        )

    @staticmethod
    def _plan(strategy: str, graph: ModelGraph, problem: PlanningProblem,
              devices: tuple[NodeView, ...]) -> Plan | None:
        if strategy == "optimal":
            return exact_plan(problem)
        flops = np.array([op.flops for op in graph.ops], dtype=float)
        if strategy == "amp4ec-greedy":
            return amp4ec_greedy(problem, flops, [d.speed_factor for d in devices],
                                 [1.0 - getattr(d, "cpu_percent", 0.0) / 100.0 for d in devices])
        if strategy == "flops-balanced":
            result = SimpleScheduler().place(graph, ClusterSnapshot(devices), problem.max_partitions)
            if not result.schedulable:
                return None
            index = {d.node_id: i for i, d in enumerate(devices)}
            assigned = [index[n] for n in result.node_ids]
            pin = problem.first_device
            if pin is not None and assigned[0] != pin:
                # the baseline knows no pin: put stage 0 on the pinned device (swapping stages
                # when the pinned device already holds one), as the SLA demands of every strategy
                if pin in assigned:
                    j = assigned.index(pin)
                    assigned[0], assigned[j] = assigned[j], assigned[0]
                else:
                    assigned[0] = pin
            return evaluate(problem, list(result.positions), assigned)
        raise ValueError(f"unknown strategy {strategy!r}")

    @staticmethod
    def _sla_violation(plan: Plan, constraints: Any) -> tuple[str, str] | None:
        if constraints.latency_ms is not None and plan.latency_ms > constraints.latency_ms:
            return REASON_SLA_LATENCY, (f"best predicted latency {plan.latency_ms:.1f} ms exceeds the SLA's "
                                        f"{constraints.latency_ms:g} ms")
        if constraints.energy_mj is not None and plan.energy_mj > constraints.energy_mj:
            return REASON_SLA_ENERGY, (f"predicted energy {plan.energy_mj:.1f} mJ per inference exceeds the "
                                       f"SLA's {constraints.energy_mj:g} mJ")
        return None
