"""Battery and energy re-plans: the SLA's ``battery.min_percent`` and ``energy.max_mj_per_inference``
watched on *running* deployments, not only at planning time (level-triggered, like :mod:`.reconcile`).

The planner already spares battery nodes below ``min_percent`` (``ml_scheduler`` filter
``battery_level``) and plans within the energy budget, but only when it plans. These rules
re-plan a RUNNING deployment (no worker running, no other Plan this pass, no departure hold):

1. **battery low**: a node of its placement (a relay included) reports a battery below the
   SLA's ``min_percent`` -> ``Plan`` (not an improvement: the planner's filter now excludes the
   node, so the new plan is off it). Make-before-break as every re-plan (:mod:`.deployer`): the
   old generation serves until the new one is READY, then drains, so no request fails. Only
   when another online node is not below the minimum (else there is nowhere to go and the
   deployment keeps serving where it is). The node is remembered as *spared* for it.
2. **battery back**: a spared node is online again with a charge of at least ``min_percent +
   hysteresis`` (:data:`DEFAULT_HYSTERESIS` points) -> ``Plan`` (forced: the SLA's preferences,
   e.g. its ``source``, could not be met while the node was excluded, so plan costs before and
   after are not comparable). The margin keeps a node hovering at the threshold from flapping:
   it drains below ``min`` before it leaves and must charge ``hysteresis`` points above it
   before it comes back.
3. **energy**: the measured energy per inference of the serving generation exceeds the SLA's
   ``max_mj_per_inference`` -> ``Plan`` once per generation (a plan that measures over budget
   again is not re-planned in a loop). Measured energy: sum over stages of the stage's measured
   compute ms (the node's last window, :mod:`.drift`) times the node's draw (W x ms = mJ): its
   measured power reading (``rapl``/``ina3221``) when the telemetry carries one, else its
   declared ``power_w``; plus the plan's predicted radio energy (it is not measured).

Every cause starts with ``battery:`` or ``energy:`` (:func:`cause_kind`): the deployer's
``replan`` event carries it, so ``treeline describe`` and ``GET /api/service/<id>/events`` show
why a deployment moved. The spared nodes and handled generations are memory only (after a
cluster restart, a node that charged back is seen as any online node; a join or drift re-plan
may move work back to it).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from cluster_orchestrator.reconcile import Action, DesiredDeployment, Observed, Plan
from deployment_descriptors.views import MlConstraints
from treeline_common.jobs import JobStatus, Placement

BATTERY, ENERGY = "battery", "energy"
DEFAULT_HYSTERESIS = 10.0  # percentage points above min_percent before a spared node gets work back

MeasuredMs = Callable[[str, int, int], float | None]  # (deployment_id, generation, stage) -> ms


def cause_kind(cause: str) -> str | None:
    """``battery`` or ``energy`` for a cause these rules wrote, else None."""
    head = cause.split(":", 1)[0]
    return head if head in (BATTERY, ENERGY) else None


@dataclass(frozen=True)
class Limits:
    """A deployment's SLA figures these rules watch (None: not constrained)."""

    min_battery_percent: float | None = None
    max_mj_per_inference: float | None = None

    @classmethod
    def of(cls, doc: Mapping[str, Any]) -> Limits:
        """From a deployment document's job microservice (constraints validated at intake)."""
        microservice = (doc.get("job") or {}).get("microservice") or {}
        try:
            ml = MlConstraints.from_list(list(microservice.get("constraints") or ()))
        except (KeyError, TypeError, AttributeError):
            return cls()
        return cls(ml.min_battery_percent, ml.energy_mj)


@dataclass(frozen=True)
class NodePower:
    """A node as these rules see it: liveness, battery charge (None: mains), draw while computing."""

    node_id: str
    name: str
    online: bool
    battery_percent: float | None
    power_w: float | None
    power_measured: bool = False

    @classmethod
    def of(cls, doc: Mapping[str, Any]) -> NodePower:
        """From a node document (registration fields plus its last telemetry)."""
        telemetry = doc.get("telemetry") or {}
        battery = telemetry.get("battery") if "battery" in telemetry else doc.get("battery")
        percent = battery.get("percent") if isinstance(battery, Mapping) else None
        power = telemetry.get("power") if isinstance(telemetry.get("power"), Mapping) else None
        measured = power is not None and not power.get("estimated") and power.get("watts") is not None
        watts = float(power["watts"]) if measured and power is not None else doc.get("power_w")
        return cls(str(doc["node_id"]), str(doc.get("name") or doc["node_id"]), bool(doc.get("online")),
                   float(percent) if isinstance(percent, int | float) else None,
                   float(watts) if isinstance(watts, int | float) else None, measured)


def predicted_energy_mj(placement: Placement) -> float | None:
    """The plan's predicted energy per inference (mJ), None when it carries no prediction."""
    value = (placement.predicted or {}).get("energy_mj")
    return float(value) if isinstance(value, int | float) else None


def measured_energy_mj(placement: Placement, nodes: Mapping[str, NodePower],
                       measured_ms: MeasuredMs) -> float | None:
    """Measured energy per inference (mJ; the module docstring's rule 3); None until every
    stage has a measured window and a known draw."""
    predicted = placement.predicted or {}
    total = predicted_energy_mj(placement)
    stage_predicted = sum(float(s.get("energy_mj") or 0.0) for s in predicted.get("stages") or ())
    radio = max(0.0, total - stage_predicted) if total is not None else 0.0
    energy = radio
    for stage in placement.stages:
        ms = measured_ms(placement.deployment_id, placement.generation, stage.index)
        node = nodes.get(stage.node_id)
        if ms is None or node is None or node.power_w is None:
            return None
        energy += ms * node.power_w
    return energy


def _low(node: NodePower, floor: float) -> bool:
    return node.battery_percent is not None and node.battery_percent < floor


def _charged(node: NodePower, level: float) -> bool:
    return node.battery_percent is not None and node.battery_percent >= level


def energy_plans(desired: Mapping[str, DesiredDeployment], limits: Mapping[str, Limits],
                 nodes: Mapping[str, NodePower], measured_ms: MeasuredMs,
                 spared: Mapping[str, frozenset[str]], handled: frozenset[tuple[str, int]],
                 skip: frozenset[str], hysteresis: float = DEFAULT_HYSTERESIS) -> list[Plan]:
    """The Plans of rules 1-3 (pure; deterministic: deployments in sorted order, one Plan each at
    most). ``skip``: deployments with a worker or another Plan this pass."""
    plans = []
    for deployment_id in sorted(desired):
        want, limit = desired[deployment_id], limits.get(deployment_id, Limits())
        if deployment_id in skip or want.status is not JobStatus.RUNNING or want.placement is None:
            continue
        plan = _battery_plan(want.placement, limit, nodes, spared.get(deployment_id, frozenset()), hysteresis)
        if plan is None and limit.max_mj_per_inference is not None \
                and (deployment_id, want.placement.generation) not in handled:
            energy = measured_energy_mj(want.placement, nodes, measured_ms)
            if energy is not None and energy > limit.max_mj_per_inference:
                plan = (f"{ENERGY}: measured {energy:.2f} mJ per inference exceeds the SLA's "
                        f"{limit.max_mj_per_inference:g} mJ")
        if plan is not None:
            plans.append(Plan(deployment_id, plan))
    return plans


def _battery_plan(placement: Placement, limit: Limits, nodes: Mapping[str, NodePower],
                  spared: frozenset[str], hysteresis: float) -> str | None:
    floor = limit.min_battery_percent
    if floor is None:
        return None
    used = placement.node_ids()
    low = [nodes[n] for n in sorted(used) if n in nodes and _low(nodes[n], floor)]
    if low:
        elsewhere = any(n.online and n.node_id not in used and not _low(n, floor) for n in nodes.values())
        if not elsewhere:
            return None  # nowhere to go: keep serving where it is
        named = ", ".join(f"{n.name} at {n.battery_percent:.1f}%" for n in low)
        return f"{BATTERY}: {named} below the SLA's minimum {floor:g}%"
    back = [nodes[n] for n in sorted(spared - used)
            if n in nodes and nodes[n].online and _charged(nodes[n], floor + hysteresis)]
    if back:
        named = ", ".join(f"{n.name} at {n.battery_percent:.1f}%" for n in back)
        return f"{BATTERY}: {named} charged to the SLA's minimum {floor:g}% + {hysteresis:g} points"
    return None


class EnergyWatch:
    """Runs :func:`energy_plans` in the reconcile pass and remembers what it decided: nodes spared
    per deployment (rule 1 adds, rule 2 removes) and generations handled by rule 3. Thread-safe."""

    def __init__(self, measured_ms: MeasuredMs, hysteresis: float = DEFAULT_HYSTERESIS) -> None:
        self._measured_ms = measured_ms
        self.hysteresis = hysteresis
        self._lock = threading.Lock()
        self._spared: dict[str, frozenset[str]] = {}
        self._handled: set[tuple[str, int]] = set()

    def plans(self, docs: Iterable[Mapping[str, Any]], desired: Mapping[str, DesiredDeployment],
              observed: Observed, node_docs: Iterable[Mapping[str, Any]],
              actions: Iterable[Action]) -> list[Plan]:
        """This pass's battery/energy Plans, beside the reconcile rule's ``actions``."""
        if observed.plans_held:
            return []
        limits = {str(d["deployment_id"]): Limits.of(d) for d in docs}
        nodes = {n.node_id: n for n in map(NodePower.of, node_docs)}
        skip = observed.workers | {a.deployment_id for a in actions if isinstance(a, Plan)}
        with self._lock:
            self._spared = {d: s for d, s in self._spared.items() if d in desired}
            plans = energy_plans(desired, limits, nodes, self._measured_ms, self._spared,
                                 frozenset(self._handled), frozenset(skip), self.hysteresis)
            for plan in plans:
                want = desired[plan.deployment_id]
                assert want.placement is not None  # energy_plans plans RUNNING placements only
                used = want.placement.node_ids()
                floor = limits[plan.deployment_id].min_battery_percent
                if cause_kind(plan.cause) == ENERGY:
                    self._handled.add((plan.deployment_id, want.placement.generation))
                elif floor is not None and any(_low(nodes[n], floor) for n in used if n in nodes):
                    self._spared[plan.deployment_id] = self._spared.get(plan.deployment_id, frozenset()) | {
                        n for n in used if n in nodes and _low(nodes[n], floor)}
                elif floor is not None:  # rule 2: the nodes charged back are no longer spared
                    left = frozenset(n for n in self._spared.get(plan.deployment_id, frozenset())
                                     if n not in nodes or not _charged(nodes[n], floor + self.hysteresis))
                    self._spared[plan.deployment_id] = left
        return plans

    def spared(self, deployment_id: str) -> frozenset[str]:
        """Nodes the deployment was moved off for their battery and not yet given back."""
        with self._lock:
            return self._spared.get(deployment_id, frozenset())


def energy_view(placement: Placement | None, node_docs: Iterable[Mapping[str, Any]],
                measured_ms: MeasuredMs) -> dict[str, Any]:
    """``{predicted_mj, measured_mj, power}`` per inference of the serving plan (the deployment
    view; ``power``: ``measured`` when every stage node reports a measured power, else ``declared``)."""
    if placement is None:
        return {"predicted_mj": None, "measured_mj": None, "power": None}
    nodes = {n.node_id: n for n in map(NodePower.of, node_docs)}
    measured = measured_energy_mj(placement, nodes, measured_ms)
    every = all(nodes[s.node_id].power_measured for s in placement.stages if s.node_id in nodes)
    return {"predicted_mj": predicted_energy_mj(placement),
            "measured_mj": round(measured, 4) if measured is not None else None,
            "power": "measured" if every else "declared"}
