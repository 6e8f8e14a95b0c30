"""The root's fan-out of a hierarchical training service and the aggregator address route.

With ``training.hierarchical`` one instance request creates a root part (the root aggregator, on
the first cluster of the coarse order) and one cluster part per cluster whose dry run can place
the flat job; fewer such clusters than ``min_clusters`` is refused naming
``training.hierarchical.min_clusters`` and nothing is sent. The cluster parts learn the root
aggregator's address from ``GET /api/training/<service>/<root instance>/aggregator`` (404 until
the root part's cluster pushed its ``training_server_started`` event).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from test_root_api import Root, _error
from test_training_root import training_sla

from node_engine.training import model as mlp
from root_orchestrator.stores import open_stores
from treeline_common.jobs import JobRequest

pytest.importorskip("torch")

SCHEDULABLE = {"schedulable": True, "message": "", "training": {"clients": ["n1", "n2"]}}
NO_DATA = {"schedulable": False, "message": "training.data: no node carries label data:digits"}


@pytest.fixture
def root(mongo_url: str) -> Iterator[Root]:
    stores = open_stores(mongo_url)
    yield Root(stores)
    stores.close()


def hierarchical_sla(model: str, min_clusters: int = 2) -> dict[str, Any]:
    sla = training_sla(model)
    sla["applications"][0]["microservices"][0]["training"]["hierarchical"] = {
        "cluster_rounds": 2, "min_clusters": min_clusters}
    return sla


def setup(root: Root, clusters: int, min_clusters: int = 2) -> str:
    parent = root.register_model("digits", mlp.to_onnx(mlp.new_model(0)))
    for i in range(1, clusters + 1):  # c1 is the least loaded: first in the coarse order
        root.register_cluster(f"c{i}", f"http://c{i}.test", cpu_percent=10 * i, cpu_cores=4, memory_mb=4096)
        root.clusters.plans[f"http://c{i}.test"] = SCHEDULABLE
    return root.submit(hierarchical_sla(f"digits:{parent['version']}", min_clusters))


def test_one_request_makes_a_root_part_and_one_part_per_participating_cluster(root: Root) -> None:
    service_id = setup(root, 3)
    root.clusters.plans["http://c2.test"] = NO_DATA
    r = root.http.post(f"/api/service/{service_id}/instance")
    assert r.status_code in (200, 201), r.get_json()
    body = r.get_json()
    jobs = {(url, number): JobRequest.from_dict(job) for url, _, number, job in root.clusters.deployed}
    assert sorted(jobs) == [("http://c1.test", 0), ("http://c1.test", 1), ("http://c3.test", 2)]
    root_part = jobs[("http://c1.test", 0)].training_part
    assert root_part is not None and (root_part.role, root_part.root_instance) == ("root", 0)
    assert root_part.clusters == ("c1", "c3")
    for key in (("http://c1.test", 1), ("http://c3.test", 2)):
        part = jobs[key].training_part
        assert part is not None and (part.role, part.root_instance) == ("cluster", 0)
    assert body["instance"] == 0 and [p["role"] for p in body["parts"]] == ["root", "cluster", "cluster"]
    service = root.http.get(f"/api/service/{service_id}").get_json()
    assert [(i["instance"], i["status"], i["training_part"]) for i in service["instances"]] == [
        (0, "SCHEDULED", "root"), (1, "SCHEDULED", "cluster"), (2, "SCHEDULED", "cluster")]


def test_too_few_participating_clusters_are_refused_naming_min_clusters(root: Root) -> None:
    service_id = setup(root, 2)
    root.clusters.plans["http://c2.test"] = NO_DATA
    error = _error(root.http.post(f"/api/service/{service_id}/instance"), 422, "UNSCHEDULABLE")
    assert error["details"][0]["path"] == "training.hierarchical.min_clusters", error
    assert "1 cluster(s) can train data:digits; min_clusters is 2" in error["message"], error
    assert {"path": "clusters.c2", "message": NO_DATA["message"]} in error["details"], error
    assert root.clusters.deployed == []


def test_the_aggregator_address_is_served_once_the_root_part_reported_it(root: Root) -> None:
    service_id = setup(root, 2)
    assert root.http.post(f"/api/service/{service_id}/instance").status_code in (200, 201)
    cluster = root.cluster_client()
    path = f"/api/training/{service_id}/0/aggregator"
    assert "not started yet" in _error(cluster.get(path), 404, "NOT_FOUND")["message"]
    _error(cluster.get(f"/api/training/{service_id}/7/aggregator"), 404, "NOT_FOUND")
    c1 = next(c["cluster_id"] for c in root.http.get("/api/clusters").get_json()
              if c["cluster_name"] == "c1")
    started = {"ts": 5.0, "kind": "training_server_started", "cause": "training",
               "message": "Flower server at 127.0.0.1:7000", "address": "127.0.0.1:7000"}
    push = {"aggregate": {}, "jobs": [{"service_id": service_id, "instance": 0, "status": "RUNNING",
                                       "events": [started]}]}
    assert root.http.post(f"/api/information/{c1}", json=push).status_code == 200  # as c1 registered
    r = cluster.get(path)
    assert r.status_code == 200 and r.get_json() == {"address": "127.0.0.1:7000"}, r.get_json()

    # a cluster part that ends does not speak for the service: its root part does
    done = {"service_id": service_id, "instance": 1, "status": "DELETED",
            "status_detail": f"cluster part done, aggregated into {service_id}/0"}
    assert root.http.post(f"/api/information/{c1}", json={"aggregate": {}, "jobs": [done]}).status_code == 200
    service = root.http.get(f"/api/service/{service_id}").get_json()
    assert [i["status"] for i in service["instances"]][:2] == ["RUNNING", "DELETED"], service["instances"]
    assert service["status"] == "RUNNING", service


def test_the_route_answers_the_newest_address_of_a_restarted_root_aggregator(root: Root) -> None:
    service_id = setup(root, 2)
    assert root.http.post(f"/api/service/{service_id}/instance").status_code in (200, 201)
    c1 = next(c["cluster_id"] for c in root.http.get("/api/clusters").get_json() if c["cluster_name"] == "c1")
    events = [{"ts": 5.0, "kind": "training_server_started", "cause": "training", "message": "at :7000",
               "address": "127.0.0.1:7000"},
              {"ts": 6.0, "kind": "training_server_restarted", "cause": "training", "message": "resuming"},
              {"ts": 7.0, "kind": "training_server_started", "cause": "training", "message": "at :7444",
               "address": "127.0.0.1:7444"}]
    push = {"aggregate": {}, "jobs": [{"service_id": service_id, "instance": 0, "status": "RUNNING",
                                       "events": events}]}
    assert root.http.post(f"/api/information/{c1}", json=push).status_code == 200
    r = root.cluster_client().get(f"/api/training/{service_id}/0/aggregator")
    assert r.status_code == 200 and r.get_json() == {"address": "127.0.0.1:7444"}, r.get_json()


def test_deleting_the_root_part_deletes_its_cluster_parts(root: Root) -> None:
    service_id = setup(root, 2)
    assert root.http.post(f"/api/service/{service_id}/instance").status_code in (200, 201)
    assert root.http.delete(f"/api/service/{service_id}/instance/1").status_code == 200  # a part alone
    service = root.http.get(f"/api/service/{service_id}").get_json()
    assert [i["instance"] for i in service["instances"]] == [0, 2]
    assert root.http.delete(f"/api/service/{service_id}/instance/0").status_code == 200
    assert sorted(n for _, _, n in root.clusters.undeployed) == [0, 1, 2], root.clusters.undeployed
    assert root.http.get(f"/api/service/{service_id}").get_json()["instances"] == []


def _push(root: Root, cluster_name: str, *jobs: dict[str, Any]) -> None:
    clusters = root.http.get("/api/clusters").get_json()
    cid = next(c["cluster_id"] for c in clusters if c["cluster_name"] == cluster_name)
    assert root.http.post(f"/api/information/{cid}", json={"aggregate": {"active_nodes": 1},
                                                           "jobs": list(jobs)}).status_code == 200


def test_a_hierarchical_part_on_a_lost_cluster_fails_instead_of_moving_as_a_flat_job(root: Root) -> None:
    from root_orchestrator.api.context import context_of

    service_id = setup(root, 3)
    assert root.http.post(f"/api/service/{service_id}/instance").status_code in (200, 201)
    sent = len(root.clusters.deployed)
    for name, number in (("c1", 0), ("c1", 1), ("c2", 2), ("c3", 3)):
        _push(root, name, {"service_id": service_id, "instance": number, "status": "RUNNING"})
    failover = context_of(root.app).failover
    root.clock.advance(failover.window_s + 1)
    _push(root, "c1")
    _push(root, "c2")  # c3 went silent with its cluster part
    [action] = failover.reconcile_once()
    assert (action["action"], action["instance"], action["role"]) == ("fail_part", 3, "cluster"), action
    assert len(root.clusters.deployed) == sent  # nothing sent anywhere: no flat copy of the part
    service = root.http.get(f"/api/service/{service_id}").get_json()
    lost = service["instances"][3]
    assert lost["status"] == "FAILED" and "is not moved to another cluster" in lost["status_detail"], lost
    assert service["status"] == "RUNNING"  # the root part speaks for the service and carries on
    assert failover.reconcile_once() == []  # once

    root.clock.advance(failover.window_s + 1)
    _push(root, "c2")  # now c1, with the root part (and one cluster part), went silent too
    actions = failover.reconcile_once()  # the root part fails and takes its cluster parts with it
    assert [(a["instance"], a["role"]) for a in actions] == [(0, "root")], actions
    assert len(root.clusters.deployed) == sent
    service = root.http.get(f"/api/service/{service_id}").get_json()
    assert service["status"] == "FAILED" and "training root part is not moved" in service["status_detail"]
    assert [i["instance"] for i in service["instances"]] == [0]
    assert ("http://c2.test", service_id, 2) in root.clusters.undeployed  # c2 is active: told at once


@pytest.mark.parametrize("min_clusters, schedulable", [(2, True), (3, False)])
def test_the_dry_run_of_a_hierarchy_names_its_parts_or_min_clusters(root: Root, min_clusters: int,
                                                                   schedulable: bool) -> None:
    parent = root.register_model("digits", mlp.to_onnx(mlp.new_model(0)))
    for i in range(1, 4):
        root.register_cluster(f"c{i}", f"http://c{i}.test", cpu_percent=10 * i, cpu_cores=4, memory_mb=4096)
        root.clusters.plans[f"http://c{i}.test"] = SCHEDULABLE
    root.clusters.plans["http://c2.test"] = NO_DATA
    r = root.http.post("/api/plan", json=hierarchical_sla(f"digits:{parent['version']}", min_clusters))
    assert r.status_code == 200, r.get_json()
    [row] = r.get_json()["services"]
    assert row["schedulable"] is schedulable, row
    parts = row["hierarchy"]
    assert (parts["root_cluster"], parts["clusters"]) == ("c1", ["c1", "c3"])
    assert parts["min_clusters"] == min_clusters
    assert parts["rejected"]["c2"] == NO_DATA["message"]
    if not schedulable:
        assert row["message"] == "training.hierarchical.min_clusters: 2 cluster(s) can train data:digits; " \
                                 "min_clusters is 3", row
    assert root.clusters.deployed == []  # a dry run deploys nothing


def test_the_route_says_when_the_root_aggregator_has_finished(root: Root) -> None:
    service_id = setup(root, 2)
    assert root.http.post(f"/api/service/{service_id}/instance").status_code in (200, 201)
    started = {"ts": 5.0, "kind": "training_server_started", "cause": "training",
               "message": "Flower server at 127.0.0.1:7000", "address": "127.0.0.1:7000"}
    _push(root, "c1", {"service_id": service_id, "instance": 0, "status": "RUNNING", "events": [started]})
    path = f"/api/training/{service_id}/0/aggregator"
    assert root.cluster_client().get(path).get_json() == {"address": "127.0.0.1:7000"}
    _push(root, "c1", {"service_id": service_id, "instance": 0, "status": "DELETED",
                       "status_detail": "training done: registered digits:2"})
    error = _error(root.cluster_client().get(path), 409, "CONFLICT")  # its cluster parts end, not re-dial
    assert "has finished (DELETED)" in error["message"], error
