"""Canary rollouts, the pure parts: the verdict from figures, the policy from the SLA, the entry's
split in the stage table, answer agreement, the reconcile rules and the wire fields."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import numpy as np
import pytest

from cluster_orchestrator.reconcile import DesiredDeployment, Observed, ObservedNode, Plan, reconcile
from cluster_orchestrator.rollout import (
    PROMOTE,
    ROLLBACK,
    WAIT,
    CanaryFigures,
    RolloutPolicy,
    decide,
    wants_canary,
)
from cluster_orchestrator.rollout_checks import outputs_agree
from deployment_descriptors import parse_microservice
from node_engine.stages import RELAY_SESSION, LoadedStage, StageTable, relay_stage
from root_orchestrator.apply import _model_moved_only
from treeline_cli.describe import rollout_lines
from treeline_common.jobs import JobStatus, Placement, StagePlacement
from treeline_common.messages import DeployCommand, PayloadError, decode, encode, stage_key

POLICY = RolloutPolicy(canary_share=0.1, min_requests=20, max_latency_ms=50.0, max_disagreement=0.1,
                       probe=8, timeout_s=30.0)


@pytest.mark.parametrize(("figures", "action", "words"), [
    (CanaryFigures(1.0, live_requests=15, probe_requests=8, latency_ms=5.0, disagreement=0.0), PROMOTE,
     "23 requests"),
    (CanaryFigures(1.0, live_requests=3, probe_requests=8, latency_ms=5.0, disagreement=0.0), WAIT,
     "11 of 20"),
    (CanaryFigures(1.0, live_requests=99, probe_requests=8, latency_ms=80.0, disagreement=0.0), ROLLBACK,
     "latency 80.0 ms exceeds"),
    (CanaryFigures(1.0, live_requests=99, probe_requests=8, latency_ms=5.0, disagreement=0.25), ROLLBACK,
     "disagrees with the serving one on 25%"),
    (CanaryFigures(0.5, probe_requests=7, probe_errors=1, first_error="boom"), ROLLBACK, "boom"),
    # a timeout counts the evidence there is: a complete, agreeing probe within the bound promotes
    (CanaryFigures(30.0, live_requests=2, probe_requests=8, latency_ms=5.0, disagreement=0.0), PROMOTE,
     "timeout after 30 s; all 8 probe inputs"),
    (CanaryFigures(30.0, live_requests=2, latency_ms=5.0), ROLLBACK, "not enough to judge"),
    (CanaryFigures(30.0, live_requests=0, probe_requests=0), ROLLBACK, "timeout: 0 of 20"),
    (CanaryFigures(30.0, live_requests=3, probe_requests=5, latency_ms=5.0, disagreement=0.0), PROMOTE,
     "8 of 20 requests answered, all within"),
    (CanaryFigures(29.9, live_requests=2, probe_requests=8), WAIT, "10 of 20"),
    # an idle service: no live request for 10 s and a complete, agreeing probe is enough
    (CanaryFigures(12.0, probe_requests=8, latency_ms=5.0, disagreement=0.0, idle_s=10.0), PROMOTE,
     "no live request for 10 s"),
    (CanaryFigures(12.0, probe_requests=8, latency_ms=5.0, disagreement=0.0, idle_s=9.9), WAIT, "8 of 20"),
    (CanaryFigures(12.0, probe_requests=7, latency_ms=5.0, disagreement=0.0, idle_s=11.0), WAIT, "7 of 20"),
    (CanaryFigures(12.0, probe_requests=8, latency_ms=80.0, disagreement=0.0, idle_s=11.0), ROLLBACK,
     "latency 80.0 ms"),
    (CanaryFigures(12.0, probe_requests=8, latency_ms=5.0, disagreement=0.5, idle_s=11.0), ROLLBACK,
     "disagrees"),
])
def test_the_verdict_follows_the_figures(figures: CanaryFigures, action: str, words: str) -> None:
    verdict = decide(POLICY, figures)
    assert verdict.action == action and words in verdict.reason


def test_without_a_probe_an_idle_canary_waits_for_the_timeout() -> None:
    unprobed = replace(POLICY, probe=0)
    idle = CanaryFigures(12.0, latency_ms=None, idle_s=12.0)
    assert decide(unprobed, idle).action == WAIT
    assert decide(unprobed, replace(idle, elapsed_s=30.0)).action == ROLLBACK
    assert decide(unprobed, replace(idle, elapsed_s=30.0, live_requests=4, latency_ms=3.0)).action == PROMOTE
    assert decide(POLICY, CanaryFigures(5.0, probe_requests=8, latency_ms=5.0, disagreement=0.0, idle_s=5.0),
                  idle_s=5.0).action == PROMOTE


def test_a_breach_wins_over_enough_requests_and_no_bound_means_no_latency_check() -> None:
    slow = CanaryFigures(1.0, live_requests=500, latency_ms=900.0, disagreement=0.0)
    assert decide(POLICY, slow).action == ROLLBACK
    assert decide(replace(POLICY, max_latency_ms=None), slow).action == PROMOTE


def microservice(rollout: dict[str, Any] | None, latency_ms: float | None = None) -> Any:
    model: dict[str, Any] = {"name": "m", "inputs": [{"name": "x", "shape": [1, 4], "dtype": "float32"}]}
    if rollout is not None:
        model["rollout"] = rollout
    constraints = [{"type": "e2e_latency", "threshold_ms": latency_ms}] if latency_ms else []
    return parse_microservice({"microserviceID": "", "microservice_name": "m", "microservice_namespace": "d",
                               "virtualization": "ml-model", "memory": 64, "vcpus": 1, "model": model,
                               "constraints": constraints, "connectivity": []})


def test_the_policy_defaults_to_a_ten_percent_canary_bounded_by_the_sla_latency() -> None:
    policy = RolloutPolicy.of(microservice(None, latency_ms=40.0))
    assert (policy.strategy, policy.canary_share, policy.max_latency_ms) == ("canary", 0.1, 40.0)
    own = RolloutPolicy.of(microservice({"canary_share": 0.5, "max_latency_ms": 9, "probe": 0}, 40.0))
    assert (own.canary_share, own.max_latency_ms, own.probe) == (0.5, 9.0, 0)


def test_bad_rollout_values_are_refused_naming_the_field() -> None:
    with pytest.raises(Exception) as refused:
        microservice({"canary_share": 0, "strategy": "big-bang"})
    text = str(getattr(refused.value, "details", refused.value))
    assert "model.rollout.canary_share" in text and "model.rollout.strategy" in text


def test_a_canary_needs_another_model_a_known_serving_one_and_a_whole_pipeline() -> None:
    assert wants_canary(POLICY, "old", "new", True)
    assert not wants_canary(POLICY, "same", "same", True)
    assert not wants_canary(POLICY, None, "new", True)
    assert not wants_canary(POLICY, "old", "new", False)
    assert not wants_canary(replace(POLICY, strategy="immediate"), "old", "new", True)


def router_command(share: float, diverts: str = "d-0/1/0") -> DeployCommand:
    return DeployCommand("d-0", 999, "", "", ["x"], ["x"], generation=2, relay=True, divert_from=diverts,
                         divert_share=share)


def entry_stage() -> LoadedStage:
    return LoadedStage(key="d-0/1/0", deployment_id="d-0", index=0, sha256="a" * 64, generation=1,
                       session=RELAY_SESSION, next=None)


@pytest.mark.parametrize(("share", "low", "high"), [(0.0, 0, 0), (1.0, 2000, 2000), (0.25, 400, 600)])
def test_the_entry_hands_its_share_to_the_router(share: float, low: int, high: int) -> None:
    table = StageTable()
    table.put(entry_stage())
    table.put(relay_stage(router_command(share)))
    picks = [table.get("d-0/1/0") for _ in range(2000)]
    routed = sum(1 for p in picks if p is not None and p.key == "d-0/2/999")
    assert low <= routed <= high
    assert all(p is not None for p in picks)


def test_removing_the_router_ends_the_split_at_once() -> None:
    table = StageTable()
    table.put(entry_stage())
    router = relay_stage(router_command(1.0))
    assert not router.relay and router.outputs == ("x",)  # runs on a worker, forwards the inputs
    table.put(router)
    assert table.get("d-0/1/0").key == "d-0/2/999"  # type: ignore[union-attr]
    table.remove_matching("d-0", stage=999, generation=2)
    assert all(table.get("d-0/1/0").key == "d-0/1/0" for _ in range(50))  # type: ignore[union-attr]


@pytest.mark.parametrize(("change", "words"), [
    ({"relay": False}, "only a relay stage may divert"),
    ({"divert_from": "other-0/1/0"}, "same deployment"),
    ({"divert_from": "nonsense"}, "not a stage key"),
    ({"divert_share": 1.5}, "divert_share"),
])
def test_a_bad_router_command_is_refused_on_decode(change: dict[str, Any], words: str) -> None:
    body = encode(router_command(0.5)).decode()
    doc = {**json.loads(body), **change}
    with pytest.raises(PayloadError, match=words):
        decode(DeployCommand, json.dumps(doc))


def test_a_command_without_rollout_fields_still_decodes() -> None:
    plain = DeployCommand("d-0", 0, "http://x/a", "a" * 64, ["x"], ["y"])
    assert decode(DeployCommand, encode(plain)).divert_from == ""


def test_answers_agree_when_close_or_same_class() -> None:
    a = {"y": np.array([[0.1, 0.9, 0.0]], dtype=np.float32)}
    assert outputs_agree(a, {"y": a["y"] + 1e-6})
    assert outputs_agree(a, {"y": np.array([[0.3, 0.6, 0.1]], dtype=np.float32)})  # same top-1
    assert not outputs_agree(a, {"y": np.array([[0.9, 0.1, 0.0]], dtype=np.float32)})
    assert not outputs_agree(a, {"y": a["y"][:, :2]})
    assert not outputs_agree(a, {"z": a["y"]})


def placement(generation: int) -> Placement:
    return Placement(deployment_id="d-0", generation=generation, stages=(
        StagePlacement(index=0, node_id="a", endpoint="tcp://a", stage_key=stage_key("d-0", 0, generation)),))


def test_reconcile_keeps_the_router_and_restarts_an_interrupted_canary() -> None:
    router = ("a", "d-0/2/999")
    want = DesiredDeployment("d-0", JobStatus.RUNNING, placement=placement(1), pending=placement(2),
                             placed_at=0.0, considered=frozenset({"a"}), router=router)
    nodes = Observed({"a": ObservedNode("a", True, frozenset({"d-0/1/0", "d-0/2/0", "d-0/2/999"}), 10.0)},
                     workers=frozenset({"d-0"}))
    assert reconcile({"d-0": want}, nodes, 100.0) == []  # the worker runs the canary: nothing deleted
    [plan] = reconcile({"d-0": want}, replace(nodes, workers=frozenset()), 100.0)
    assert isinstance(plan, Plan) and "interrupted" in plan.cause


def test_a_refused_version_is_not_retried_for_a_join() -> None:
    want = DesiredDeployment("d-0", JobStatus.RUNNING, placement=placement(1), placed_at=0.0,
                             considered=frozenset({"a"}))
    nodes = Observed({n: ObservedNode(n, True, frozenset({"d-0/1/0"} if n == "a" else ()), 10.0)
                      for n in ("a", "b")})
    [plan] = reconcile({"d-0": want}, nodes, 100.0)
    assert plan.improve  # type: ignore[union-attr]
    assert reconcile({"d-0": replace(want, rolled_back=True)}, nodes, 100.0) == []


def test_the_root_rolls_in_place_only_for_a_model_version_or_rollout_change() -> None:
    base = "microservices[m].model."
    assert _model_moved_only([{"path": base + "version", "old": 1, "new": 2}], "m")
    assert _model_moved_only([{"path": base + "rollout.canary_share", "old": 0.1, "new": 0.2}], "m")
    assert not _model_moved_only([{"path": base + "max_partitions", "old": 1, "new": 2},
                                  {"path": base + "version", "old": 1, "new": 2}], "m")
    assert not _model_moved_only([], "m")


def test_describe_shows_the_newest_rollout_step_with_its_reason() -> None:
    events: list[dict[str, Any]] = [{"kind": "canary_share", "cause": "model a v1 -> a v2", "share": 0.1},
              {"kind": "replan", "cause": "new deployment"},
              {"kind": "rolled_back", "cause": "model a v1 -> a v2", "reason": "latency 80.0 ms exceeds"}]
    assert rollout_lines(events[:2]) == ["Rollout:      canary_share (model a v1 -> a v2): "
                                         "10% of requests to the canary"]
    assert rollout_lines(events) == ["Rollout:      rolled_back (model a v1 -> a v2): "
                                     "latency 80.0 ms exceeds"]
    assert rollout_lines(events[1:2]) == []
