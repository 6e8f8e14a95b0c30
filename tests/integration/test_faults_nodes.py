"""Node faults under continuous traffic, with real processes and a real broker on loopback.

(a) a node is killed (SIGKILL) while serving; (b) a node dies while a deployment is DEPLOYING
onto it (frozen with SIGSTOP first, so its deploy command is never answered); (c) a killed
node is restarted with its own command line. Each asserts that no deployment is lost or
duplicated, that a retrying client loses no request, and records the recovery time.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from treeline_fault_harness import (
    Traffic,
    chain_model,
    check_deployments,
    deploy,
    deployment_id_of,
    model_sla,
    model_stack,
    node_id,
    node_name,
    nodes,
    placement_keys,
    record,
    samples,
    served_keys,
    stage_nodes,
    submit,
    wait_node_online,
    wait_recovered,
    wait_until,
)

from treeline_cli.stack import Stack

pytestmark = pytest.mark.integration

MODEL = chain_model()
RECOVERY_BOUND_S = 10.0  # generous on 2 shared cores; the benchmark measures against the 3 s goal


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    with model_stack(tmp_path, MODEL) as running:
        yield running


def test_a_node_killed_mid_traffic_is_replaced_without_failed_requests(stack: Stack) -> None:
    deployment = deploy(stack, model_sla("kill-a", "chain", [1, 32]))
    entry_node = deployment.placement()["entry"]["node_id"]
    victim = node_name(stack, entry_node)  # the entry: clients must move too
    with Traffic(stack.root_url, deployment.service_id, MODEL) as traffic:
        traffic.wait_answers(20, timeout=10)
        killed_at = time.monotonic()
        stack.kill(f"node-{victim}")
        recover_s = wait_recovered(deployment, killed_at, without={entry_node}, timeout=30,
                                   model_samples=samples(MODEL))
        traffic.wait_answers(20, timeout=10)
    report = traffic.report
    record("a_node_kill", recover_s=round(recover_s, 3),
           longest_gap_s=round(report.longest_gap(killed_at), 3), **report.summary())
    assert not nodes(stack)[victim]["online"]
    check_deployments(stack, [deployment])
    assert report.wrong == 0, report.summary()
    assert report.failed == 0, report.summary()
    assert recover_s <= RECOVERY_BOUND_S


def test_b_node_dying_while_deploying_is_replanned_onto_the_others(stack: Stack) -> None:
    # Prepare: a first deployment profiles the model, so the second one plans at once.
    first = deploy(stack, model_sla("deploying-warm", "chain", [1, 32]))
    victim = node_name(stack, first.placement()["stages"][1]["node_id"])
    victim_id = node_id(stack, victim)

    # Execute: freeze the victim (its heartbeats stop, its MQTT session stays up), submit,
    # and kill it once the cluster waits for its stages; the first deployment carries traffic.
    seen: list[str] = []
    with Traffic(stack.root_url, first.service_id, MODEL, budget_s=15) as traffic:
        traffic.wait_answers(20, timeout=10)
        frozen_at = time.monotonic()
        stack.freeze(f"node-{victim}")
        second = submit(stack, model_sla("deploying", "chain", [1, 32]))

        def deploying_on_victim() -> bool:
            doc = second.at_cluster(stack)
            if not seen or seen[-1] != doc["status"]:
                seen.append(doc["status"])
            planned = doc.get("pending") or doc.get("placement") or {}  # the generation being brought up
            return doc["status"] == "DEPLOYING" and victim_id in stage_nodes(planned)

        try:
            wait_until(deploying_on_victim, 10, f"the second deployment to be DEPLOYING onto frozen {victim}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; statuses at the cluster: {' -> '.join(seen)}") from None
        killed_at = time.monotonic()
        stack.kill(f"node-{victim}")

        # Assert: both re-planned onto the remaining nodes, RUNNING and answering
        model_samples = samples(MODEL)
        recover_second = wait_recovered(second, killed_at, without={victim_id}, timeout=30,
                                        model_samples=model_samples)
        recover_first = wait_recovered(first, killed_at, without={victim_id}, timeout=30,
                                       model_samples=model_samples)
        traffic.wait_answers(20, timeout=10)
    report = traffic.report
    record("b_dies_while_deploying", recover_deploying_s=round(recover_second, 3),
           recover_running_s=round(recover_first, 3), frozen_for_s=round(killed_at - frozen_at, 3),
           longest_gap_s=round(report.longest_gap(frozen_at), 3), statuses=seen, **report.summary())
    check_deployments(stack, [first, second])
    assert report.failed == 0 and report.wrong == 0, report.summary()
    assert max(recover_first, recover_second) <= RECOVERY_BOUND_S


def test_c_restarted_node_gets_its_stages_back_and_new_work(stack: Stack) -> None:
    # Prepare: a deployment whose first stage is pinned to the victim (privacy pin), so no
    # other node can take that stage: the victim must get it back when it returns.
    victim = "server-2"
    victim_id = node_id(stack, victim)
    # (The exact planner: the FLOPs-balanced strategy ignores the pin when it orders nodes.)
    sla = model_sla("restart", "chain", [1, 32], scheduler_profile=None)
    sla["applications"][0]["microservices"][0]["constraints"] = [{"type": "privacy_pin", "node": victim}]
    deployment = deploy(stack, sla)
    assert deployment.placement()["stages"][0]["node_id"] == victim_id
    dep_id = deployment_id_of(deployment)
    with Traffic(stack.root_url, deployment.service_id, MODEL, budget_s=20) as traffic:
        traffic.wait_answers(20, timeout=10)

        # Execute: kill it, let the cluster see it gone, restart it with its own command line
        killed_at = time.monotonic()
        stack.kill(f"node-{victim}")
        wait_node_online(stack, victim, False, timeout=10)
        stack.restart(f"node-{victim}")
        online_s = wait_node_online(stack, victim, True, timeout=20)
        assert node_id(stack, victim) == victim_id, "a restarted node keeps its identity"

        # Assert: its stage back, served, RUNNING and answering
        def serves_again() -> bool:
            doc = deployment.doc()
            wanted = placement_keys(doc.get("placement") or {})
            return (doc.get("status") == "RUNNING" and victim_id in wanted
                    and served_keys(stack, dep_id).get(victim_id) == wanted[victim_id])

        wait_until(serves_again, 20, f"restarted {victim} to serve its pinned stage again")
        back_s = time.monotonic() - killed_at
        traffic.wait_answers(20, timeout=10)
    report = traffic.report

    # new work: a deployment submitted now (FLOPs-balanced over every node) uses it too
    later = deploy(stack, model_sla("restart-later", "chain", [1, 32]))
    record("c_node_restart", node_online_s=round(online_s, 3), stages_back_s=round(back_s, 3),
           longest_gap_s=round(report.longest_gap(killed_at), 3), **report.summary())
    assert victim_id in stage_nodes(later.placement())
    check_deployments(stack, [deployment, later])
    assert report.failed == 0 and report.wrong == 0, report.summary()
