"""Root side of several clusters: the dry-run choice on deploy, failover exactly once, release."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from test_root_api import PLAN_SUMMARY, Root, ml_sla

from root_orchestrator.api.context import context_of
from root_orchestrator.failover import ClusterFailover
from root_orchestrator.stores import open_stores
from treeline_common.errors import Unavailable

WINDOW = 30.0
PLACEMENT = {"deployment_id": "d", "generation": 1,
             "stages": [{"index": 0, "node_id": "n1", "endpoint": "tcp://10.0.0.1:1", "stage_key": "d/1/0"}],
             "entry": {"node_id": "n1", "endpoint": "tcp://10.0.0.1:1", "stage_key": "d/1/0"}}


@pytest.fixture()
def root(mongo_url: str) -> Iterator[Root]:
    stores = open_stores(mongo_url)
    yield Root(stores)
    stores.close()


def plan(latency: float) -> dict[str, Any]:
    return {**PLAN_SUMMARY, "predicted": {"latency_ms": latency, "objective": "latency", "energy_mj": 1.0}}


def push(root: Root, cid: str, *jobs: dict[str, Any]) -> dict[str, Any]:
    r = root.http.post(f"/api/information/{cid}", json={"aggregate": {"active_nodes": 1}, "jobs": list(jobs)})
    assert r.status_code == 200, r.get_json()
    return dict(r.get_json())


def report(sid: str, status: str, instance: int = 0, endpoint: str = "tcp://10.0.0.1:1") -> dict[str, Any]:
    placement = {**PLACEMENT, "entry": {**PLACEMENT["entry"], "endpoint": endpoint}}
    return {"service_id": sid, "instance": instance, "status": status, "placement": placement}


def two_clusters(root: Root) -> tuple[str, str, str]:
    """Clusters a (slower plan) and b (faster plan); the service lands on b. Returns (a, b, sid)."""
    root.register_model()
    a = root.register_cluster("a", "http://a:1", active_nodes=1, memory=1000)
    b = root.register_cluster("b", "http://b:1", active_nodes=1, memory=1000)
    root.clusters.plans = {"http://a:1": plan(9.0), "http://b:1": plan(2.0)}
    sid = root.submit()
    assert root.http.post(f"/api/service/{sid}/instance").get_json()["cluster_name"] == "b"
    return a, b, sid


def failover(root: Root) -> ClusterFailover:
    return context_of(root.app).failover


def instance(root: Root, sid: str) -> dict[str, Any]:
    return dict(root.http.get(f"/api/service/{sid}").get_json()["instances"][0])


def test_the_job_goes_to_the_cluster_whose_dry_run_is_faster_and_the_choice_is_an_event(root: Root) -> None:
    _, b, sid = two_clusters(root)
    assert [d[0] for d in root.clusters.deployed] == ["http://b:1"]
    [event] = [e for e in root.http.get(f"/api/service/{sid}/events").get_json()["events"]
               if e["kind"] == "cluster_choice"]
    assert event["chosen_id"] == b and {c["cluster_name"]: c["cost"] for c in event["candidates"]} == {"a": 9.0,
                                                                                                      "b": 2.0}


def test_a_refusing_cluster_falls_back_to_the_next_cheapest(root: Root) -> None:
    root.register_model()
    root.register_cluster("a", "http://a:1", active_nodes=1)
    root.register_cluster("b", "http://b:1", active_nodes=1)
    root.clusters.plans = {"http://a:1": plan(9.0), "http://b:1": plan(2.0)}
    root.clusters.fail["http://b:1"] = Unavailable("b went away")
    sid = root.submit()
    assert root.http.post(f"/api/service/{sid}/instance").get_json()["cluster_name"] == "a"


def test_an_sla_pinned_to_clusters_is_never_sent_elsewhere(root: Root) -> None:
    root.register_model()
    root.register_cluster("a", "http://a:1", active_nodes=5)
    root.register_cluster("b", "http://b:1", active_nodes=1)
    sla = ml_sla()
    sla["applications"][0]["microservices"][0]["constraints"] = [{"type": "clusters", "allowed": ["b"]}]
    sid = root.submit(sla)
    assert root.http.post(f"/api/service/{sid}/instance").get_json()["cluster_name"] == "b"
    assert root.clusters.planned == []  # one candidate: nothing to compare
    sla["applications"][0]["microservices"][0]["constraints"] = [{"type": "clusters", "allowed": ["zzz"]}]
    sla["applications"][0]["application_name"] = "other"
    sid2 = root.submit(sla)
    r = root.http.post(f"/api/service/{sid2}/instance")
    assert r.status_code == 422, r.get_json()
    details = {d["path"]: d["message"] for d in r.get_json()["error"]["details"]}
    assert set(details) == {"clusters.a", "clusters.b", "constraints"}
    assert details["constraints"] == "no cluster named 'zzz' is registered (there are a, b)"
    service = root.http.get(f"/api/service/{sid2}").get_json()  # describe says why nothing runs
    assert service["status"] == "REQUESTED" and service["status_detail"].startswith("not deployed: no cluster meets")
    sla["applications"][0]["microservices"][0]["constraints"] = [{"type": "clusters", "allowed": []}]
    sla["applications"][0]["application_name"] = "third"
    empty = root.http.post("/api/application/", json=sla)
    assert empty.status_code == 400 and "allowed" in empty.get_json()["error"]["details"][0]["path"]


def test_failover_moves_once_switches_on_running_and_releases_the_old_cluster(root: Root) -> None:
    a, b, sid = two_clusters(root)
    push(root, b, report(sid, "RUNNING", endpoint="tcp://b-node:1"))
    fo = failover(root)
    assert fo.reconcile_once() == []  # everybody is active
    root.clock.advance(WINDOW + 1)
    push(root, a)  # a stays active; b went silent
    [action] = fo.reconcile_once()
    assert action["action"] == "move" and action["to"] == a
    assert root.clusters.deployed[-1][:3] == ("http://a:1", sid, 0)  # same service and instance number
    assert fo.reconcile_once() == [] and len(root.clusters.deployed) == 2  # exactly once
    inst = instance(root, sid)
    assert inst["cluster_id"] == b and inst["moving_to"] == a
    assert inst["placement"]["entry"]["endpoint"] == "tcp://b-node:1"  # the old one serves meanwhile
    push(root, a, report(sid, "DEPLOYING", endpoint="tcp://a-node:1"))
    assert instance(root, sid)["placement"]["entry"]["endpoint"] == "tcp://b-node:1"
    push(root, a, report(sid, "RUNNING", endpoint="tcp://a-node:1"))
    inst = instance(root, sid)
    assert inst["cluster_id"] == a and inst["moving_to"] is None and inst["moved_from"] == [b]
    assert inst["placement"]["entry"]["endpoint"] == "tcp://a-node:1" and inst["status"] == "RUNNING"
    kinds = [e["kind"] for e in root.http.get(f"/api/service/{sid}/events").get_json()["events"]]
    assert kinds.count("cluster_choice") == 2 and kinds.count("moved") == 1
    # b comes back and reports what it still holds: it is told to let go, and nothing changes
    answer = push(root, b, report(sid, "RUNNING", endpoint="tcp://b-node:1"))
    assert answer["release"] == [{"service_id": sid, "instance": 0, "reason": f"instance belongs to cluster {a}"}]
    assert instance(root, sid)["cluster_id"] == a
    assert instance(root, sid)["placement"]["entry"]["endpoint"] == "tcp://a-node:1"
    root.clock.advance(1)
    assert fo.reconcile_once() == [] and len(root.clusters.deployed) == 2  # no move back, no duplicate


def test_a_failed_move_is_abandoned_and_released_and_tried_again(root: Root) -> None:
    a, b, sid = two_clusters(root)
    fo = failover(root)
    root.clock.advance(WINDOW + 1)
    push(root, a)
    fo.reconcile_once()
    push(root, a, {**report(sid, "FAILED"), "status_detail": "no node fits"})
    inst = instance(root, sid)
    assert inst["moving_to"] is None and inst["cluster_id"] == b
    assert push(root, a, report(sid, "FAILED"))["release"][0]["service_id"] == sid  # a lets its copy go
    root.clock.advance(1)
    push(root, a)
    assert fo.reconcile_once()[0]["action"] == "move"  # level-triggered: tried again


def test_failover_is_blocked_by_a_clusters_constraint_and_says_why(root: Root) -> None:
    root.register_model()
    a = root.register_cluster("a", "http://a:1", active_nodes=1)
    root.register_cluster("b", "http://b:1", active_nodes=1)
    sla = ml_sla()
    sla["applications"][0]["microservices"][0]["constraints"] = [{"type": "clusters", "allowed": ["b"]}]
    sid = root.submit(sla)
    root.http.post(f"/api/service/{sid}/instance")
    fo = failover(root)
    root.clock.advance(WINDOW + 1)
    push(root, a)
    [action] = fo.reconcile_once()
    assert action["action"] == "blocked" and len(root.clusters.deployed) == 1
    events = root.http.get(f"/api/service/{sid}/events").get_json()["events"]
    blocked = [e for e in events if e["kind"] == "failover_blocked"]
    assert len(blocked) == 1 and "not_allowed" in blocked[0]["reasons"]["clusters.a"]
    assert "cannot move" in instance(root, sid)["status_detail"]
    assert fo.reconcile_once() == []  # retried only after the retry period


def test_no_failover_right_after_the_root_starts(root: Root) -> None:
    _, _, sid = two_clusters(root)
    fresh = ClusterFailover(context_of(root.app).instances)
    root.clock.advance(WINDOW + 1)  # nobody pushed: either they are all gone, or the root just started
    assert fresh.reconcile_once()[0]["action"] == "blocked"  # a and b are both inactive: nowhere to go
    later = ClusterFailover(context_of(root.app).instances)
    assert later.reconcile_once() == []  # a root that just started declares nobody dead


def test_deleting_an_instance_of_an_inactive_cluster_does_not_wait_for_it(root: Root) -> None:
    _, b, sid = two_clusters(root)
    root.clock.advance(WINDOW + 1)
    r = root.http.delete(f"/api/service/{sid}/instance/0")
    assert r.status_code == 200, r.get_json()
    assert root.clusters.undeployed == []  # b is not called: it learns on its next push
    answer = push(root, b, report(sid, "RUNNING"))
    assert answer["release"] == [{"service_id": sid, "instance": 0, "reason": "unknown instance"}]
    assert push(root, b, report(sid, "DELETED"))["release"] == []  # its last report is expected


@pytest.mark.parametrize(("patch", "path"), [
    ({"active_nodes": "many"}, "aggregate.active_nodes"),
    ({"architectures": [1, 2]}, "aggregate.architectures"),
    ({"architectures": {"riscv64": "x"}}, "aggregate.architectures.riscv64"),
    ({"memory_total_free_mb": -5}, "aggregate.memory_total_free_mb"),
    ({"battery_share": 7}, "aggregate.battery_share"),
    ({"accelerator_kinds": ["gpu"]}, "aggregate.accelerator_kinds"),
    ({"best_device_class": 3}, "aggregate.best_device_class"),
    ({"links": {"rtt_ms_median": -1}}, "aggregate.links.rtt_ms_median"),
    ({"cpu_percent": 250}, "aggregate.cpu_percent"),
])
def test_a_malformed_aggregate_is_refused_whole_and_nothing_is_stored(root: Root, patch: dict[str, Any],
                                                                      path: str) -> None:
    cid = root.register_cluster("a", "http://a:1", active_nodes=1, architectures={"x86_64": 1})
    r = root.http.post(f"/api/information/{cid}", json={"aggregate": {"active_nodes": 2, **patch}, "jobs": []})
    assert r.status_code == 400, r.get_json()
    assert path in [d["path"] for d in r.get_json()["error"]["details"]]
    stored = root.http.get(f"/api/clusters/{cid}").get_json()["aggregate"]
    assert stored == {"active_nodes": 1, "architectures": {"x86_64": 1}}  # the last good push stays
