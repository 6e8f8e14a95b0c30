"""Two real clusters on loopback: the dry-run choice, cluster failover under traffic, pinned SLAs.

One stack: a root (active window 6 s), cluster-1 with an ``rpi4`` node (a quarter of this host's
speed) and cluster-2 with a ``server`` node, each cluster with its own Mosquitto; clusters push
every second. Checked, in order:

1. an unpinned service goes to the cluster whose dry-run plan is cheaper (both are asked; the
   choice and both answers are in the service's events);
2. a service pinned to cluster-2 by a ``clusters`` constraint goes there;
3. cluster-2's orchestrator is killed mid-traffic: within the window plus a deployment the
   unpinned service is served by cluster-1 (its events say ``moved``), every request is
   answered (make-before-break: cluster-2's node keeps serving until the switch), and the pinned
   service is not moved (a ``failover_blocked`` event says why);
4. cluster-2 comes back: it learns from the root that the service moved and deletes it (its node
   stops serving the old stages); the root still names cluster-1, once; the pinned service is
   RUNNING on cluster-2 again.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from treeline_fault_harness import (
    Traffic,
    chain_model,
    deploy,
    fault_stack,
    log_tails,
    model_sla,
    register_model,
    wait_until,
)

from treeline_cli.root_client import RootClient
from treeline_cli.stack import Stack
from treeline_common.http import call_json

pytestmark = pytest.mark.integration

WINDOW_S = 6.0
MODEL = chain_model(width=64, layers=6)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    data_dir: Path = tmp_path_factory.mktemp("two-clusters")
    with fault_stack(data_dir, ("rpi4", "server"), clusters=2, nodes_per_cluster=(1, 1), push_interval=1.0,
                     root_args=("--active-window", str(WINDOW_S))) as running:
        register_model(running, "chain", MODEL)
        yield running
        print(log_tails(running))


def cluster_ids(stack: Stack) -> dict[str, str]:
    """Cluster name -> id at the root."""
    return {c["cluster_name"]: c["cluster_id"] for c in RootClient(stack.root_url).clusters()}


def events(root: RootClient, service_id: str) -> list[dict[str, Any]]:
    return root.service_events(service_id)


def sla(app: str, allowed: list[str] | None = None) -> dict[str, Any]:
    doc = model_sla(app, "chain", [1, 64], max_partitions=1, scheduler_profile=None)
    if allowed is not None:
        doc["applications"][0]["microservices"][0]["constraints"] = [{"type": "clusters", "allowed": allowed}]
    return copy.deepcopy(doc)


def cluster_deployment(cluster_url: str, service_id: str) -> dict[str, Any]:
    return dict(call_json("GET", f"{cluster_url}/api/deployments/{service_id}/0", timeout=5))


def node_stages(cluster_url: str) -> set[str]:
    body = call_json("GET", f"{cluster_url}/api/nodes", timeout=5)
    return {k for n in body["nodes"] for k in ((n.get("telemetry") or {}).get("stages") or [])}


def test_choice_failover_under_traffic_and_release(stack: Stack) -> None:
    ids = cluster_ids(stack)
    assert set(ids) == {"cluster-1", "cluster-2"}
    one, two = stack.clusters[0], stack.clusters[1]

    # 1. the faster dry run wins, and both answers are recorded
    free = deploy(stack, sla("free"))
    root = free.root
    [choice] = [e for e in events(root, free.service_id) if e["kind"] == "cluster_choice"]
    costs = {c["cluster_name"]: c["cost"] for c in choice["candidates"]}
    assert set(costs) == {"cluster-1", "cluster-2"} and costs["cluster-2"] < costs["cluster-1"], choice
    assert choice["chosen"] == "cluster-2" and free.doc()["cluster_id"] == ids["cluster-2"]

    # 2. a clusters constraint is honoured
    pinned = deploy(stack, sla("pinned", ["cluster-2"]))
    assert pinned.doc()["cluster_id"] == ids["cluster-2"]
    old_keys = {s["stage_key"] for s in free.placement()["stages"]}

    # 3. cluster-2's orchestrator dies mid-traffic
    with Traffic(stack.root_url, free.service_id, MODEL, budget_s=20.0) as traffic:
        traffic.wait_answers(5, timeout=20)
        stack.kill(two.process)
        killed = time.monotonic()
        wait_until(lambda: free.doc().get("cluster_id") == ids["cluster-1"]
                   and free.doc().get("status") == "RUNNING", WINDOW_S + 40,
                   "the unpinned service to be RUNNING on cluster-1")
        moved_after = time.monotonic() - killed
        traffic.wait_answers(5, timeout=20)  # answered by cluster-1's placement now
    report = traffic.report
    print(f"moved {moved_after:.1f} s after the kill; traffic {report.summary()}")
    assert report.failed == 0 and report.wrong == 0, report.summary()
    assert moved_after < WINDOW_S + 30, moved_after
    kinds = [e["kind"] for e in events(root, free.service_id)]
    assert kinds.count("moved") == 1, kinds
    assert pinned.doc()["cluster_id"] == ids["cluster-2"]
    wait_until(lambda: any(e["kind"] == "failover_blocked" for e in events(root, pinned.service_id)), 10,
               "the pinned service's failover_blocked event")
    [doc] = [i for i in free.doc()["instances"]]
    assert doc["moved_from"] == [ids["cluster-2"]]

    # 4. cluster-2 returns: it releases the moved service and keeps the pinned one
    stack.restart(two.process)
    wait_until(lambda: cluster_deployment(two.url, free.service_id)["status"] == "DELETED", 30,
               "cluster-2 to delete the moved deployment")
    wait_until(lambda: not (old_keys & node_stages(two.url)), 30, "cluster-2's node to drop the old stages")
    assert free.doc()["cluster_id"] == ids["cluster-1"] and len(free.doc()["instances"]) == 1
    assert cluster_deployment(one.url, free.service_id)["status"] == "RUNNING"
    wait_until(lambda: pinned.doc().get("status") == "RUNNING", 30, "the pinned service RUNNING again")
    assert pinned.doc()["cluster_id"] == ids["cluster-2"]
    assert [e["kind"] for e in events(root, free.service_id)].count("moved") == 1  # never moved back
