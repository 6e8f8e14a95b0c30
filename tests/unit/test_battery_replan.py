"""The battery/energy re-plan rule (cluster_orchestrator.energy_rule): off a node below the SLA's
battery minimum when there is somewhere to go, back once it charged past the hysteresis, once per
generation over the energy budget; measured energy per inference; what a node document says."""

from __future__ import annotations

from typing import Any

import pytest

from cluster_orchestrator.energy_rule import (
    DEFAULT_HYSTERESIS,
    EnergyWatch,
    Limits,
    NodePower,
    cause_kind,
    energy_view,
    measured_energy_mj,
)
from cluster_orchestrator.reconcile import DesiredDeployment, Observed, ObservedNode, Plan
from treeline_common.jobs import JobStatus, Placement, StagePlacement

DEP = "svc-0"


def placement(node: str, generation: int = 1, energy: float = 3.0) -> Placement:
    stage = StagePlacement(0, node, "tcp://127.0.0.1:1", f"{DEP}/{generation}/0", node_name=node)
    return Placement(DEP, generation, (stage,), predicted={
        "energy_mj": energy, "stages": [{"index": 0, "node_id": node, "energy_mj": energy - 0.5}]})


def job_doc(min_percent: float | None = 30.0, max_mj: float | None = None) -> dict[str, Any]:
    constraints: list[dict[str, Any]] = []
    if min_percent is not None:
        constraints.append({"type": "battery", "min_percent": min_percent})
    if max_mj is not None:
        constraints.append({"type": "energy", "max_mj_per_inference": max_mj})
    return {"deployment_id": DEP, "job": {"microservice": {"constraints": constraints}}}


def node_doc(node_id: str, percent: float | None, online: bool = True, power_w: float = 6.0,
             power: dict[str, Any] | None = None) -> dict[str, Any]:
    telemetry: dict[str, Any] = {"battery": {"percent": percent} if percent is not None else None}
    if power is not None:
        telemetry["power"] = power
    return {"node_id": node_id, "name": f"{node_id}-name", "online": online, "power_w": power_w,
            "telemetry": telemetry}


class Harness:
    """One EnergyWatch over a RUNNING deployment, its job and its nodes."""

    def __init__(self, on: str = "rpi", measured: float | None = None, **limits: Any) -> None:
        self.watch = EnergyWatch(lambda d, g, s: measured)
        self.doc = job_doc(**limits)
        self.placement = placement(on)

    def plans(self, nodes: list[dict[str, Any]], *, status: JobStatus = JobStatus.RUNNING,
              workers: frozenset[str] = frozenset(), held: bool = False,
              actions: tuple[Plan, ...] = ()) -> list[Plan]:
        desired = {DEP: DesiredDeployment(DEP, status, placement=self.placement)}
        observed = Observed({n["node_id"]: ObservedNode(n["node_id"], n["online"]) for n in nodes},
                            workers=workers, plans_held=held)
        return self.watch.plans([self.doc], desired, observed, nodes, list(actions))


def test_a_node_below_the_minimum_is_left_when_another_node_can_take_the_work() -> None:
    h = Harness()
    assert h.plans([node_doc("rpi", 30.0), node_doc("server", None)]) == []  # at the minimum: stays
    [plan] = h.plans([node_doc("rpi", 29.5), node_doc("server", None)])
    assert plan.deployment_id == DEP and not plan.improve and cause_kind(plan.cause) == "battery"
    assert "rpi-name at 29.5%" in plan.cause and "minimum 30%" in plan.cause
    assert h.watch.spared(DEP) == {"rpi"}


@pytest.mark.parametrize("others", [
    [],  # alone
    [node_doc("other", 10.0)],  # every other node is low too
    [node_doc("server", None, online=False)],  # the mains node is offline
])
def test_nowhere_to_go_keeps_serving(others: list[dict[str, Any]]) -> None:
    assert Harness().plans([node_doc("rpi", 5.0), *others]) == []


def test_no_plan_while_a_worker_runs_another_plan_is_due_nodes_leave_or_not_running() -> None:
    h = Harness()
    nodes = [node_doc("rpi", 5.0), node_doc("server", None)]
    assert h.plans(nodes, workers=frozenset({DEP})) == []
    assert h.plans(nodes, actions=(Plan(DEP, "node x offline"),)) == []
    assert h.plans(nodes, held=True) == []
    assert h.plans(nodes, status=JobStatus.DEGRADED) == []
    assert Harness(min_percent=None).plans(nodes) == []  # the SLA sets no minimum


def test_moved_back_only_once_charged_past_the_hysteresis() -> None:
    h = Harness()
    h.plans([node_doc("rpi", 12.0), node_doc("server", None)])
    h.placement = placement("server", generation=2)  # the re-plan went live off the rpi
    threshold = 30.0 + DEFAULT_HYSTERESIS
    assert h.plans([node_doc("rpi", 35.0), node_doc("server", None)]) == []  # above min, not past margin
    assert h.plans([node_doc("rpi", threshold, online=False), node_doc("server", None)]) == []
    [plan] = h.plans([node_doc("rpi", threshold), node_doc("server", None)])
    assert cause_kind(plan.cause) == "battery" and "charged" in plan.cause and not plan.improve
    assert h.watch.spared(DEP) == frozenset()
    assert h.plans([node_doc("rpi", 90.0), node_doc("server", None)]) == []  # given back once


def test_a_node_never_spared_is_not_a_reason_to_move() -> None:
    h = Harness(on="server")
    assert h.plans([node_doc("rpi", 100.0), node_doc("server", None)]) == []


def test_over_the_energy_budget_replans_once_per_generation() -> None:
    # measured 1.0 ms at 6 W = 6 mJ, plus the predicted radio share 0.5 mJ
    h = Harness(measured=1.0, min_percent=None, max_mj=5.0)
    nodes = [node_doc("rpi", 80.0), node_doc("server", None)]
    [plan] = h.plans(nodes)
    assert cause_kind(plan.cause) == "energy" and "6.50 mJ" in plan.cause and "5 mJ" in plan.cause
    assert h.plans(nodes) == []  # this generation was handled
    h.placement = placement("rpi", generation=2)
    assert len(h.plans(nodes)) == 1  # a new generation over budget again: once more
    assert Harness(measured=1.0, min_percent=None, max_mj=7.0).plans(nodes) == []  # within budget
    assert Harness(measured=None, min_percent=None, max_mj=1.0).plans(nodes) == []  # nothing measured


def test_measured_energy_uses_measured_power_where_reported() -> None:
    plan = placement("rpi", energy=3.0)
    declared = {"rpi": NodePower.of(node_doc("rpi", 50.0, power_w=6.0))}
    assert measured_energy_mj(plan, declared, lambda d, g, s: 2.0) == pytest.approx(12.5)
    rapl = {"rpi": NodePower.of(node_doc("rpi", 50.0, power={"watts": 4.0, "source": "rapl"}))}
    assert measured_energy_mj(plan, rapl, lambda d, g, s: 2.0) == pytest.approx(8.5)
    estimated = {"watts": 1.0, "source": "profile", "estimated": True}
    assert NodePower.of(node_doc("rpi", 50.0, power=estimated)).power_w == 6.0
    assert measured_energy_mj(plan, declared, lambda d, g, s: None) is None
    view = energy_view(plan, [node_doc("rpi", 50.0, power={"watts": 4.0, "source": "rapl"})],
                       lambda d, g, s: 2.0)
    assert view == {"predicted_mj": 3.0, "measured_mj": 8.5, "power": "measured"}
    assert energy_view(None, [], lambda d, g, s: 2.0)["measured_mj"] is None


def test_node_and_limit_views() -> None:
    mains = NodePower.of({"node_id": "s", "online": True, "battery": None, "telemetry": {}})
    assert mains.battery_percent is None and mains.power_w is None and mains.name == "s"
    registered = NodePower.of({"node_id": "r", "battery": {"percent": 70}})  # no telemetry yet
    assert registered.battery_percent == 70.0
    assert Limits.of(job_doc(25.0, 9.0)) == Limits(25.0, 9.0)
    assert Limits.of({"job": {"microservice": {"constraints": [{"no": "type"}]}}}) == Limits()
    assert cause_kind("node a offline") is None and cause_kind("energy: x") == "energy"
