"""Control-plane faults under continuous traffic: the cluster orchestrator and the root are
killed (SIGKILL) and restarted with their own command lines; the MQTT broker is killed and
restarted on the same port after 3 s and after a long outage (12 s: longer than every timer the
outage runs into, see ``LONG_OUTAGE_S``).

Expected: the data plane keeps answering throughout (it does not depend on the control
plane), every deployment is RUNNING again afterwards with none lost or duplicated, no node
is declared dead because the broker (not the node) went away, and the control plane takes
new deployments afterwards.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from treeline_fault_harness import (
    Deployment,
    Traffic,
    chain_model,
    check_deployments,
    deploy,
    model_sla,
    model_stack,
    node_name,
    nodes,
    record,
    samples,
    wait_node_online,
    wait_recovered,
    wait_until,
)

from cluster_orchestrator.liveness import MAX_DEPARTURE_HOLD
from treeline_cli.stack import Stack
from treeline_common.http import call_json

pytestmark = pytest.mark.integration

MODEL = chain_model()
OUTAGE_S = 5.0  # how long an orchestrator stays down while a node dies
# A broker outage longer than every timer it runs into: the MQTT keepalive of the cluster's and the
# nodes' sessions (10 s), paho's reconnect backoff cap (5 s), the cluster's hold of a mass silence
# (3 heartbeat timeouts: 6 s in fault stacks) and the longest departure hold (MAX_DEPARTURE_HOLD,
# 10 s). It used to be 30 s: the extra 18 s crossed no further timer.
LONG_OUTAGE_S = max(12.0, MAX_DEPARTURE_HOLD + 2.0)


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    with model_stack(tmp_path, MODEL) as running:
        yield running


class OfflineWatch:
    """Polls the cluster's ``GET /api/nodes`` on a thread; records every node it shows offline."""

    def __init__(self, stack: Stack, interval: float = 0.1) -> None:
        self.stack = stack
        self.interval = interval
        self.offline: dict[str, float] = {}  # node name -> first time seen offline (monotonic)
        self.polls = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> OfflineWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                seen = nodes(self.stack, timeout=1.0)
            except Exception:  # noqa: BLE001 - the cluster may be the process that is down
                continue
            self.polls += 1
            for name, doc in seen.items():
                if not doc.get("online"):
                    self.offline.setdefault(name, time.monotonic())


def generation(stack: Stack, deployment: Deployment) -> int:
    return int(deployment.at_cluster(stack).get("generation") or 0)


def cluster_answers(stack: Stack) -> bool:
    return bool(call_json("GET", f"{stack.cluster_url}/api/health", timeout=1).get("status") == "ok")


def root_answers(stack: Stack) -> bool:
    return bool(call_json("GET", f"{stack.root_url}/api/clusters/", timeout=1).get("clusters"))


@pytest.mark.parametrize("component", ["cluster", "root"])
def test_d_orchestrator_killed_and_restarted_keeps_every_deployment(stack: Stack, component: str) -> None:
    deployment = deploy(stack, model_sla(f"restart-{component}", "chain", [1, 32]))
    with Traffic(stack.root_url, deployment.service_id, MODEL) as traffic, OfflineWatch(stack) as watch:
        traffic.wait_answers(20, timeout=10)
        killed_at = time.monotonic()
        stack.kill(component)
        traffic.wait_answers(20, timeout=10)  # the data plane does not need the control plane
        stack.restart(component)
        wait_until(lambda: cluster_answers(stack) and root_answers(stack), 20,
                   f"the {component} to answer again")
        lost = not_running_after([deployment], timeout=20)
        recover_s = time.monotonic() - killed_at
        traffic.wait_answers(20, timeout=10)
    report = traffic.report
    record(f"d_{component}_restart", recover_s=round(recover_s, 3), nodes_seen_offline=sorted(watch.offline),
           lost_deployments=len(lost), **report.summary())
    assert not lost, f"deployments not RUNNING 20 s after the restart: {lost}"
    assert not watch.offline, f"nodes declared offline although none failed: {watch.offline}"
    later = deploy(stack, model_sla(f"after-{component}", "chain", [1, 32]), timeout=30)
    check_deployments(stack, [deployment, later])
    assert report.failed == 0 and report.wrong == 0, report.summary()


@pytest.mark.parametrize("outage_s", [3.0, LONG_OUTAGE_S], ids=["3s", "long"])
def test_d_broker_outage_loses_no_deployment_and_no_node(stack: Stack, outage_s: float) -> None:
    deployments = [deploy(stack, model_sla(f"broker-{i}", "chain", [1, 32])) for i in range(2)]
    generations = {d.service_id: generation(stack, d) for d in deployments}
    with Traffic(stack.root_url, deployments[0].service_id, MODEL) as traffic, OfflineWatch(stack) as watch:
        traffic.wait_answers(20, timeout=10)
        killed_at = time.monotonic()
        stack.kill_broker()
        time.sleep(outage_s)  # the outage itself, not a wait for a condition
        stack.restart_broker()
        restarted_at = time.monotonic()

        def every_node_reports_again() -> bool:
            # telemetry received after the restart from every node: the MQTT paths are back
            now = time.time()
            return all(doc.get("online") and now - float((doc.get("telemetry") or {}).get("ts") or 0) < 1.5
                       for doc in nodes(stack).values())

        wait_until(every_node_reports_again, 30, "telemetry from every node after the broker restart")
        reconnect_s = time.monotonic() - restarted_at
        lost = not_running_after(deployments, timeout=20)
        traffic.wait_answers(20, timeout=10)
    report = traffic.report
    replanned = [d.service_id for d in deployments if generation(stack, d) != generations[d.service_id]]
    record(f"d_broker_outage_{outage_s:.0f}s", reconnect_s=round(reconnect_s, 3),
           total_s=round(time.monotonic() - killed_at, 3), lost_deployments=len(lost),
           replanned=len(replanned), nodes_seen_offline=sorted(watch.offline), **report.summary())
    assert watch.polls >= 10 * outage_s / 2, f"only {watch.polls} polls of the cluster's node list"
    assert not watch.offline, f"nodes declared offline because the broker died: {watch.offline}"
    assert not lost, f"deployments not RUNNING 20 s after the outage: {lost}"
    later = deploy(stack, model_sla("broker-after", "chain", [1, 32]), timeout=30)
    check_deployments(stack, [*deployments, later])
    assert report.failed == 0 and report.wrong == 0, report.summary()


@pytest.mark.parametrize("component", ["cluster", "root"])
def test_d_node_dies_while_an_orchestrator_is_down(stack: Stack, component: str) -> None:
    """Level-triggered: a fault the orchestrator did not see happen is found from the state."""
    deployment = deploy(stack, model_sla(f"missed-{component}", "chain", [1, 32]))
    placement = deployment.placement()
    victim_id = str(placement["stages"][1]["node_id"])  # not the entry: clients keep their socket
    victim = node_name(stack, victim_id)
    with Traffic(stack.root_url, deployment.service_id, MODEL, budget_s=20) as traffic:
        traffic.wait_answers(20, timeout=10)
        down_at = time.monotonic()
        stack.kill(component)
        stack.kill(f"node-{victim}")
        if component == "root":  # the cluster is up and sees the node go
            wait_node_online(stack, victim, False, timeout=10)
        time.sleep(OUTAGE_S)  # the outage itself: the cluster cannot upload partitions to the root
        stack.restart(component)
        recover_s = wait_recovered(deployment, down_at, without={victim_id}, timeout=30,
                                   model_samples=samples(MODEL))
        traffic.wait_answers(20, timeout=10)
    report = traffic.report
    record(f"d_node_dies_while_{component}_down", recover_s=round(recover_s, 3),
           longest_gap_s=round(report.longest_gap(down_at), 3), **report.summary())
    assert not nodes(stack)[victim]["online"]
    check_deployments(stack, [deployment])
    assert report.failed == 0 and report.wrong == 0, report.summary()


def test_d_node_dying_during_a_broker_outage_is_still_detected(stack: Stack) -> None:
    """No will can be delivered while the broker is down: the missing heartbeats must tell,
    once the broker is back, and only for the node that really died."""
    deployment = deploy(stack, model_sla("broker-node", "chain", [1, 32]))
    victim_id = str(deployment.placement()["stages"][1]["node_id"])
    victim = node_name(stack, victim_id)
    with Traffic(stack.root_url, deployment.service_id, MODEL, budget_s=20) as traffic, \
            OfflineWatch(stack) as watch:
        traffic.wait_answers(20, timeout=10)
        stack.kill_broker()
        down_at = time.monotonic()
        stack.kill(f"node-{victim}")
        time.sleep(3.0)  # the outage itself
        stack.restart_broker()
        restarted_at = time.monotonic()
        detect_s = wait_node_online(stack, victim, False, timeout=30)
        recover_s = wait_recovered(deployment, down_at, without={victim_id}, timeout=30,
                                   model_samples=samples(MODEL))
        traffic.wait_answers(20, timeout=10)
    report = traffic.report
    others_offline = sorted(set(watch.offline) - {victim})
    record("d_node_dies_during_broker_outage", detect_after_restart_s=round(detect_s, 3),
           recover_s=round(recover_s, 3), restarted_after_s=round(restarted_at - down_at, 3),
           others_seen_offline=others_offline, **report.summary())
    assert not others_offline, f"live nodes declared offline because the broker died: {others_offline}"
    check_deployments(stack, [deployment])
    assert report.failed == 0 and report.wrong == 0, report.summary()


def not_running_after(deployments: list[Deployment], timeout: float) -> dict[str, str]:
    """Service id -> status of every deployment still not RUNNING after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        pending = {d.service_id: f"{doc.get('status')} ({doc.get('status_detail')})"
                   for d in deployments if (doc := d.doc()).get("status") != "RUNNING"}
        if not pending or time.monotonic() >= deadline:
            return pending
        time.sleep(0.1)
