"""The reconcile rule, table-driven: each desired/observed state and the actions it must yield."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cluster_orchestrator.reconcile import (
    Delete,
    DesiredDeployment,
    Observed,
    ObservedNode,
    Plan,
    Redeploy,
    Settings,
    reconcile,
)
from treeline_common.jobs import JobStatus, Placement, StagePlacement
from treeline_common.messages import DeleteCommand, stage_key

NOW = 1000.0


def placement(dep: str = "d-0", generation: int = 1, nodes: tuple[str, ...] = ("a", "b")) -> Placement:
    stages = tuple(StagePlacement(index=i, node_id=n, endpoint=f"tcp://{n}",
                                  stage_key=stage_key(dep, i, generation))
                   for i, n in enumerate(nodes))
    return Placement(deployment_id=dep, generation=generation, stages=stages)


def node(node_id: str, online: bool = True, stages: tuple[str, ...] = (),
         at: float | None = NOW) -> ObservedNode:
    return ObservedNode(node_id, online, frozenset(stages), at)


def running(dep: str = "d-0", **kw: object) -> DesiredDeployment:
    p = placement(dep)
    base = DesiredDeployment(dep, JobStatus.RUNNING, placement=p, placed_at=NOW - 10,
                             considered=frozenset({"a", "b"}))
    return replace(base, **kw)  # type: ignore[arg-type]


def observed(*nodes: ObservedNode, workers: frozenset[str] = frozenset(),
             resent: dict[tuple[str, str], float] | None = None) -> Observed:
    return Observed({n.node_id: n for n in nodes}, workers, resent or {})


def healthy() -> Observed:
    return observed(node("a", stages=("d-0/1/0",)), node("b", stages=("d-0/1/1",)))


def test_a_healthy_running_deployment_needs_nothing() -> None:
    assert reconcile({"d-0": running()}, healthy(), NOW) == []


@pytest.mark.parametrize("status", [JobStatus.REQUESTED, JobStatus.SCHEDULED, JobStatus.DEPLOYING,
                                    JobStatus.DEGRADED])
def test_in_progress_without_worker_is_planned(status: JobStatus) -> None:
    want = DesiredDeployment("d-0", status)
    [action] = reconcile({"d-0": want}, observed(node("a")), NOW)
    assert isinstance(action, Plan) and not action.improve and action.cause in (
        "new deployment", "resumed after a restart", "repair")


def test_retry_waits_for_its_time_and_a_worker_blocks_planning() -> None:
    want = DesiredDeployment("d-0", JobStatus.REQUESTED, retry_at=NOW + 1)
    assert reconcile({"d-0": want}, observed(node("a")), NOW) == []
    assert reconcile({"d-0": want}, observed(node("a")), NOW + 1) == [Plan("d-0", "retry")]
    busy = observed(node("a"), workers=frozenset({"d-0"}))
    assert reconcile({"d-0": replace(want, retry_at=None)}, busy, NOW) == []


def test_a_lost_node_triggers_a_repair_plan() -> None:
    obs = observed(node("a", stages=("d-0/1/0",)), replace(node("b", online=False), name="rpi4-1"))
    assert reconcile({"d-0": running()}, obs, NOW) == [Plan("d-0", "node rpi4-1 offline")]


def test_failed_unschedulable_is_retried_when_capacity_returns() -> None:
    failed = DesiredDeployment("d-0", JobStatus.FAILED, failed_capacity=frozenset({"a"}))
    assert reconcile({"d-0": failed}, observed(node("a")), NOW) == []
    assert reconcile({"d-0": failed}, observed(node("a"), node("c")), NOW) == [
        Plan("d-0", "capacity returned: c online")]
    other = replace(failed, failed_capacity=None)  # failed for another reason: not retried by capacity
    assert reconcile({"d-0": other}, observed(node("a"), node("c")), NOW) == []


def test_a_joined_node_triggers_an_improvement_unless_backing_off() -> None:
    obs = observed(node("a", stages=("d-0/1/0",)), node("b", stages=("d-0/1/1",)), node("c"))
    assert reconcile({"d-0": running()}, obs, NOW) == [Plan("d-0", "node c joined", improve=True)]
    assert reconcile({"d-0": running(retry_at=NOW + 5)}, obs, NOW) == []


def test_drift_longer_than_the_window_triggers_an_improvement() -> None:
    rules = Settings(drift_window=30.0)
    assert reconcile({"d-0": running(drift_since=NOW - 10)}, healthy(), NOW, rules) == []
    [action] = reconcile({"d-0": running(drift_since=NOW - 31)}, healthy(), NOW, rules)
    assert isinstance(action, Plan) and action.improve and "drifted" in action.cause


def test_a_restarted_node_gets_its_stage_back_once_per_interval() -> None:
    obs = observed(node("a", stages=("d-0/1/0",)), node("b", stages=()))  # b restarted empty
    assert reconcile({"d-0": running()}, obs, NOW) == [Redeploy("b", "d-0", 1, 1, "d-0/1/1")]
    recent = observed(*obs.nodes.values(), resent={("b", "d-0/1/1"): NOW - 1})
    assert reconcile({"d-0": running()}, recent, NOW) == []
    # telemetry older than the placement says nothing about the stage
    stale = observed(node("a", stages=("d-0/1/0",)), node("b", at=NOW - 20))
    assert reconcile({"d-0": running()}, stale, NOW) == []


def test_stages_nobody_wants_are_deleted() -> None:
    obs = observed(node("a", stages=("d-0/1/0", "d-0/0/0", "gone-0/3/0", "junk")),
                   node("b", stages=("d-0/1/1",)))
    actions = reconcile({"d-0": running()}, obs, NOW)
    assert actions == [
        Delete("a", DeleteCommand("d-0", 0, 0), "generation 0 is not desired"),
        Delete("a", DeleteCommand("gone-0", 0, 3), "unknown deployment"),
    ]


@pytest.mark.parametrize("status", [JobStatus.FAILED, JobStatus.DELETED])
def test_failed_or_deleted_deployments_never_keep_serving(status: JobStatus) -> None:
    want = running(status=status)
    actions = reconcile({"d-0": want}, healthy(), NOW)
    assert {(a.node_id, a.command) for a in actions if isinstance(a, Delete)} == {
        ("a", DeleteCommand("d-0", 0, 1)), ("b", DeleteCommand("d-0", 1, 1))}


def test_make_before_break_keeps_both_generations_until_the_switch() -> None:
    new = placement(generation=2, nodes=("c",))
    obs = observed(node("a", stages=("d-0/1/0",)), node("b", stages=("d-0/1/1",)),
                   node("c", stages=("d-0/2/0",)))
    bringing_up = running(pending=new, considered=frozenset({"a", "b", "c"}))
    with_worker = observed(*obs.nodes.values(), workers=frozenset({"d-0"}))
    assert reconcile({"d-0": bringing_up}, with_worker, NOW) == []
    switched = running(placement=new, considered=frozenset({"a", "b", "c"}), placed_at=NOW - 1)
    assert reconcile({"d-0": switched}, obs, NOW, Settings(drain=3.0)) == []  # the old one drains first
    deletes = reconcile({"d-0": switched}, obs, NOW + 2.0, Settings(drain=3.0))
    assert [(d.node_id, d.command.generation) for d in deletes if isinstance(d, Delete)] == [
        ("a", 1), ("b", 1)]


def test_a_worker_bringing_up_a_newer_generation_is_not_undercut() -> None:
    obs = observed(node("a", stages=("d-0/1/0", "d-0/2/0")), node("b", stages=("d-0/1/1",)),
                   workers=frozenset({"d-0"}))
    assert reconcile({"d-0": running()}, obs, NOW) == []


def test_offline_nodes_get_no_commands() -> None:
    obs = observed(node("a", online=False, stages=("zzz-0/1/0",)), node("b", stages=("d-0/1/1",)))
    assert all(not (isinstance(a, Delete | Redeploy) and a.node_id == "a") for a in reconcile({}, obs, NOW))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["a", "b", "c"]), st.booleans(),
                          st.lists(st.sampled_from(["d-0/1/0", "d-0/1/1", "d-0/2/0", "x-0/1/0"]),
                                   unique=True)),
                min_size=1, max_size=3, unique_by=lambda t: t[0]),
       st.sampled_from(list(JobStatus)))
def test_property_never_deletes_a_desired_stage_and_is_deterministic(nodes: list, status: JobStatus) -> None:
    want = running(status=status)
    obs = observed(*(node(n, online, tuple(keys)) for n, online, keys in nodes))
    actions = reconcile({"d-0": want}, obs, NOW)
    assert actions == reconcile({"d-0": want}, obs, NOW)
    assert want.placement is not None
    serving = (JobStatus.RUNNING, JobStatus.DEGRADED, JobStatus.REQUESTED, JobStatus.SCHEDULED,
               JobStatus.DEPLOYING)
    desired = {(s.node_id, s.stage_key) for s in want.placement.all_stages()} if status in serving else set()
    for action in actions:
        if isinstance(action, Delete):
            command = action.command
            key = stage_key(command.deployment_id, command.stage or 0, command.generation or 0)
            assert (action.node_id, key) not in desired
            assert obs.nodes[action.node_id].online


def test_a_node_serving_at_a_new_address_gets_its_deployment_re_planned() -> None:
    moved = replace(node("b", stages=("d-0/1/1",)), endpoint="tcp://b-new", name="rpi4-1")
    obs = observed(replace(node("a", stages=("d-0/1/0",)), endpoint="tcp://a"), moved)
    assert reconcile({"d-0": running()}, obs, NOW) == [Plan("d-0", "node rpi4-1 serves at a new address")]
    same = observed(replace(node("a", stages=("d-0/1/0",)), endpoint="tcp://a"),
                    replace(node("b", stages=("d-0/1/1",)), endpoint="tcp://b"))
    assert reconcile({"d-0": running()}, same, NOW) == []
