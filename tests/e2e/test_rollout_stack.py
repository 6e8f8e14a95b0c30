"""Canary rollouts through a real stack (broker, root, cluster, 2 node engines as processes).

v1 serves while a caller thread sends requests through its entry (ServiceClient, re-resolving
through the root). v2 (the same function, another graph) is registered and the SLA re-applied:
the entry hands a share of its requests to v2, the checks pass, v2 is promoted. v3 (its answers
rank the classes the other way round) is registered and the SLA re-applied: the probe disagrees
and v3 is rolled back within 10 s. No request of the caller fails at any point, and every step
is an event on the service.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from treeline_test_helpers import running_stack

from benchmarks.rollout import Traffic, rollout_sla, scaled, wait_for_event
from treeline_cli.root_client import RootClient
from treeline_cli.stack import Stack

pytestmark = pytest.mark.integration
DEADLINE_S = 90.0


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(tmp_path_factory.mktemp("stack"), nodes=2, profiles=("server", "server"),
                       telemetry_interval=0.5, node_threads=1, node_labels={}) as running:
        yield running


def test_a_new_version_is_promoted_and_a_disagreeing_one_rolled_back_without_failed_requests(
        stack: Stack) -> None:
    root = RootClient(stack.root_url)
    sla = rollout_sla(0.3, 12)
    root.register_model("scaler", scaled(2.0))
    [application] = root.apply(sla)
    [service_id] = application["microservices"]
    root.deploy_service(service_id)
    first = root.wait_deployed(service_id, timeout=DEADLINE_S)
    traffic = Traffic(stack.root_url, service_id).start()
    try:
        traffic.wait_for(20, DEADLINE_S)
        root.register_model("scaler", scaled(2.0, via_add=True))
        since = time.time()
        [row] = root.apply(sla)
        assert row["action"] == "updated" and row["redeployed"][0]["rollout"] is True
        promoted = wait_for_event(root, service_id, ("promoted", "rolled_back"), since, DEADLINE_S)
        assert promoted["kind"] == "promoted" and promoted["figures"]["live_requests"] > 0, promoted
        served = root.wait_deployed(service_id, timeout=DEADLINE_S)
        assert served["placement"]["generation"] > first["placement"]["generation"]
        kinds = [e["kind"] for e in root.service_events(service_id) if e["ts"] >= since]
        assert kinds.index("rollout_started") < kinds.index("canary_share") < kinds.index("promoted"), kinds

        root.register_model("scaler", scaled(-2.0))  # the argmax moves: it disagrees
        since = time.time()
        root.apply(sla)
        rolled_back = wait_for_event(root, service_id, ("promoted", "rolled_back"), since, DEADLINE_S)
        assert rolled_back["kind"] == "rolled_back" and "disagrees" in rolled_back["reason"], rolled_back
        assert rolled_back["canary_s"] <= 10.0, rolled_back
        served = root.service(service_id)
        assert served["status"] == "RUNNING" and "rolled back" in served["status_detail"]
        traffic.wait_for(traffic.total() + 10, DEADLINE_S)  # still served after the rollback
    finally:
        traffic.finish()
    assert traffic.failures == [], traffic.failures[:3]
    assert traffic.answered.get(2.0, 0) > 20 and set(traffic.answered) <= {2.0, -2.0}, traffic.answered
