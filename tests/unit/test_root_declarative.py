"""Root REST for the operator CLI: idempotent apply, dry-run plan, model deletion and profile
re-measurement, on both store backends with the fake cluster client of test_root_api."""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Iterator
from typing import Any

import pytest
from test_root_api import PLAN_SUMMARY, Root, _error, ml_sla, tiny_onnx

from root_orchestrator.cluster_client import HttpClusterClient
from root_orchestrator.stores import open_stores
from treeline_common.errors import Unavailable, Unschedulable


@pytest.fixture
def root(mongo_url: str) -> Iterator[Root]:
    stores = open_stores(mongo_url)
    yield Root(stores)
    stores.close()


def container(name: str) -> dict[str, Any]:
    return {"microserviceID": "", "microservice_name": name, "microservice_namespace": "demo",
            "virtualization": "container", "cmd": ["sh"], "memory": 100, "vcpus": 1, "vgpus": 0,
            "vtpus": 0, "bandwidth_in": 0, "bandwidth_out": 0, "storage": 0,
            "code": "docker.io/library/busybox:1", "state": "", "port": "9080", "added_files": []}


def two_services() -> dict[str, Any]:
    sla = ml_sla()
    sla["applications"][0]["microservices"].append(container("sidecar"))
    return sla


def apply(root: Root, sla: dict[str, Any]) -> dict[str, Any]:
    r = root.http.post("/api/apply", json=sla)
    assert r.status_code == 200, r.get_json()
    [row] = r.get_json()["applications"]
    return row


def service_by_name(root: Root, app_id: str, name: str) -> dict[str, Any]:
    services = root.http.get("/api/services/", query_string={"application_id": app_id}).get_json()
    [svc] = [s for s in services if s["microservice_name"] == name]
    return svc


# -- apply ------------------------------------------------------------------------------------------

def test_apply_twice_creates_one_application(root: Root) -> None:
    first = apply(root, two_services())
    assert first["action"] == "created" and first["changes"] == [] and len(first["microservices"]) == 2
    second = apply(root, two_services())
    assert second == {**first, "action": "unchanged"}
    apps = root.http.get("/api/applications/").get_json()
    assert [a["applicationID"] for a in apps] == [first["applicationID"]]
    svc = service_by_name(root, first["applicationID"], "classifier")
    assert (svc["status"], svc["instances"], svc["revision"]) == ("REQUESTED", [], 1)  # untouched
    assert root.clusters.deployed == [] and root.clusters.undeployed == []


def test_apply_is_keyed_by_caller_and_name(root: Root) -> None:
    """The key is (the caller's user id, application_name): the SLA's customerID is replaced."""
    mine = apply(root, ml_sla())
    assert apply(root, {**ml_sla(), "customerID": "bob"})["action"] == "unchanged"  # still the admin's
    bob = root.login_as(root.add_user("bob"))
    r = bob.post("/api/apply", json=ml_sla())
    [theirs] = r.get_json()["applications"]
    assert theirs["action"] == "created" and theirs["applicationID"] != mine["applicationID"]
    assert bob.get(f"/api/application/{theirs['applicationID']}").get_json()["userId"] == (
        root.stores.users.find_user("bob") or {})["user_id"]
    renamed = ml_sla()
    renamed["applications"][0]["application_name"] = "vision2"
    assert apply(root, renamed)["action"] == "created"
    assert len(root.http.get("/api/applications/").get_json()) == 3  # the admin sees every user's
    assert len(bob.get("/api/applications/").get_json()) == 1


def test_changed_microservice_is_updated_in_place_and_redeployed(root: Root) -> None:
    root.register_model()
    root.register_cluster("a", "http://a:1")
    row = apply(root, two_services())
    sid = service_by_name(root, row["applicationID"], "classifier")["service_id"]
    assert root.http.post(f"/api/service/{sid}/instance").status_code == 200
    changed = two_services()
    changed["applications"][0]["microservices"][0]["model"]["max_partitions"] = 3
    changed["applications"][0]["application_desc"] = "now bigger"
    updated = apply(root, changed)
    assert updated["action"] == "updated"
    assert updated["changes"] == [
        {"path": "application_desc", "old": "test", "new": "now bigger"},
        {"path": "microservices[classifier].model.max_partitions", "old": 2, "new": 3}]
    assert updated["microservices"] == row["microservices"]  # same service ids
    assert updated["redeployed"] == [{"service_id": sid, "old": 0, "new": 1,
                                      "cluster_id": updated["redeployed"][0]["cluster_id"]}]
    assert updated["failures"] == []
    assert root.clusters.undeployed == [("http://a:1", sid, 0)]
    assert [(d[1], d[2]) for d in root.clusters.deployed] == [(sid, 0), (sid, 1)]
    assert root.clusters.deployed[1][3]["microservice"]["model"]["max_partitions"] == 3
    svc = root.http.get(f"/api/service/{sid}").get_json()
    assert svc["microservice"]["model"]["max_partitions"] == 3 and svc["model"]["max_partitions"] == 3
    assert [i["instance"] for i in svc["instances"]] == [1]
    app = root.http.get(f"/api/application/{row['applicationID']}").get_json()
    assert app["application_desc"] == "now bigger"
    sidecar = service_by_name(root, row["applicationID"], "sidecar")
    assert sidecar["revision"] == 1  # an unchanged sibling is not touched
    assert apply(root, changed)["action"] == "unchanged"


def test_added_and_removed_microservices(root: Root) -> None:
    root.register_model()
    root.register_cluster("a", "http://a:1")
    row = apply(root, ml_sla())
    [old_sid] = row["microservices"]
    root.http.post(f"/api/service/{old_sid}/instance")
    sla = ml_sla()
    sla["applications"][0]["microservices"] = [container("sidecar")]
    updated = apply(root, sla)
    assert updated["action"] == "updated"
    paths = [(c["path"], c["old"] is None, c["new"] is None) for c in updated["changes"]]
    assert paths == [("microservices[sidecar]", True, False), ("microservices[classifier]", False, True)]
    assert updated["changes"][1]["old"]["model"]["name"] == "tiny"
    [new_sid] = updated["microservices"]
    assert new_sid != old_sid
    assert root.clusters.undeployed == [("http://a:1", old_sid, 0)]  # removed like DELETE /api/service
    _error(root.http.get(f"/api/service/{old_sid}"), 404, "NOT_FOUND")
    added = root.http.get(f"/api/service/{new_sid}").get_json()
    assert (added["microservice_name"], added["status"], added["instances"]) == ("sidecar", "REQUESTED", [])


def test_redeploy_failure_is_reported_not_500(root: Root) -> None:
    root.register_model()
    root.register_cluster("a", "http://a:1")
    row = apply(root, ml_sla())
    [sid] = row["microservices"]
    root.http.post(f"/api/service/{sid}/instance")
    root.clusters.fail["http://a:1"] = Unavailable("cluster down")
    changed = ml_sla()
    changed["applications"][0]["microservices"][0]["memory"] = 512
    updated = apply(root, changed)
    assert updated["action"] == "updated" and updated["redeployed"] == []
    assert [f["path"] for f in updated["failures"]] == [f"{sid}/0"]
    assert "cluster down" in updated["failures"][0]["message"]
    svc = root.http.get(f"/api/service/{sid}").get_json()
    assert svc["microservice"]["memory"] == 512  # desired state is updated anyway
    assert [i["instance"] for i in svc["instances"]] == [0]  # the unreachable instance is kept


def test_apply_validates_like_post_application(root: Root) -> None:
    sla = ml_sla()
    sla["applications"][0]["microservices"][0]["model"]["max_partitions"] = 0
    err = _error(root.http.post("/api/apply", json=sla), 400, "INVALID_INPUT")
    assert any("max_partitions" in d["path"] for d in err["details"])
    assert err == _error(root.http.post("/api/application/", json=sla), 400, "INVALID_INPUT")
    _error(root.http.post("/api/apply", data=b"{nope", content_type="application/json"), 400,
           "INVALID_INPUT")
    _error(root.http.post("/api/apply", json=[1, 2]), 400, "INVALID_INPUT")
    _error(root.http.post("/api/apply", json={}), 400, "INVALID_INPUT")
    assert root.http.get("/api/applications/").get_json() == []


def test_ambiguous_names_are_refused_before_any_write(root: Root) -> None:
    sla = ml_sla()
    twin = copy.deepcopy(sla["applications"][0])
    twin["application_namespace"] = "other"  # valid SLA, but apply keys by name
    sla["applications"].append(twin)
    err = _error(root.http.post("/api/apply", json=sla), 400, "INVALID_INPUT")
    assert [d["path"] for d in err["details"]] == ["applications[1].application_name"]
    assert root.http.get("/api/applications/").get_json() == []
    # POST /api/application/ refuses a second "vision" (409); stores from before that rule may hold two
    ids = [root.stores.applications.create_application({"application_name": "vision"}, [],
                                                       root.admin["user_id"])["applicationID"]
           for _ in range(2)]
    err = _error(root.http.post("/api/apply", json=ml_sla()), 409, "CONFLICT")
    assert err["details"][0]["path"] == "applications[0].application_name"
    assert all(i in err["details"][0]["message"] for i in ids)


# -- plan -------------------------------------------------------------------------------------------

def test_plan_asks_the_best_cluster_and_deploys_nothing(root: Root) -> None:
    model = root.register_model()
    root.register_cluster("small", "http://small:1", active_nodes=1)
    big = root.register_cluster("big", "http://big:1", active_nodes=3)
    root.clusters.plans["http://small:1"] = {**PLAN_SUMMARY, "predicted": {"latency_ms": 40.0}}
    r = root.http.post("/api/plan", json=two_services())
    assert r.status_code == 200, r.get_json()
    [row] = r.get_json()["services"]  # the container is not Treeline's to plan
    candidates = {c["cluster_name"]: c["cost"] for c in row.pop("candidates")}
    assert candidates == {"big": 4.5, "small": 40.0} and row.pop("rejected") == {}
    assert row == {"application_name": "vision", "microservice_name": "classifier", "service_id": None,
                   "model": {"name": "tiny", "version": 1, "sha256": model["sha256"]},
                   "cluster_id": big, "cluster_name": "big", "schedulable": True, "strategy": "dp-latency",
                   "predicted": PLAN_SUMMARY["predicted"],
                   "stages": [{"index": 0, "node_name": "n1", "flops": 8, "cut_bytes": 0,
                               "predicted_compute_ms": 1.5}],
                   "reasons": {"n2": "offline"}, "message": ""}
    assert sorted(url for url, _ in root.clusters.planned) == ["http://big:1", "http://small:1"]
    job = root.clusters.planned[0][1]
    assert job["model"] == {"name": "tiny", "version": 1, "sha256": model["sha256"],
                            "signature": model["signature"]}
    assert job["microservice"]["microservice_name"] == "classifier"
    assert job["root_url"] == "http://root.test:10000"
    assert root.clusters.deployed == []
    assert root.http.get("/api/applications/").get_json() == []


def test_plan_names_the_existing_service_and_reports_unschedulable(root: Root) -> None:
    root.register_model()
    root.register_cluster("a", "http://a:1")
    [sid] = apply(root, ml_sla())["microservices"]
    root.clusters.plans["http://a:1"] = {"schedulable": False, "strategy": "", "stages": [],
                                         "reasons": {"n1": "memory 64 MB < 300 MB"}, "predicted": None}
    [row] = root.http.post("/api/plan", json=ml_sla()).get_json()["services"]
    assert row["service_id"] == sid and row["schedulable"] is False
    assert (row["stages"], row["predicted"], row["reasons"]) == ([], {}, {"n1": "memory 64 MB < 300 MB"})
    assert root.clusters.planned[0][1]["service_id"] == sid


def test_plan_falls_back_past_broken_clusters(root: Root) -> None:
    root.register_model()
    root.register_cluster("a", "http://a:1", active_nodes=5)
    root.register_cluster("b", "http://b:1", active_nodes=3)
    c = root.register_cluster("c", "http://c:1", active_nodes=1)
    root.clusters.fail["http://a:1"] = Unavailable("connection refused")
    root.clusters.plans["http://b:1"] = {"nonsense": True}
    [row] = root.http.post("/api/plan", json=ml_sla()).get_json()["services"]
    assert row["cluster_id"] == c
    root.clusters.fail["http://c:1"] = Unavailable("down too")
    err = _error(root.http.post("/api/plan", json=ml_sla()), 503, "UNAVAILABLE")
    assert [d["path"] for d in err["details"]] == ["clusters.a", "clusters.b", "clusters.c"]


def test_plan_bad_inputs(root: Root) -> None:
    _error(root.http.post("/api/plan", json={"sla_version": "v2.0"}), 400, "INVALID_INPUT")
    _error(root.http.post("/api/plan", data=b"nope", content_type="application/json"), 400, "INVALID_INPUT")
    root.register_cluster("a", "http://a:1")
    err = _error(root.http.post("/api/plan", json=ml_sla(name="ghost")), 404, "NOT_FOUND")
    assert err["details"][0]["path"] == "applications[0].microservices[0].model.name"
    root.register_model()
    err = _error(root.http.post("/api/plan", json=ml_sla(model_ref=9)), 404, "NOT_FOUND")
    assert err["details"][0]["path"] == "applications[0].microservices[0].model.version"
    root.clock.advance(60)  # the only cluster goes quiet
    err = _error(root.http.post("/api/plan", json=ml_sla()), 422, "UNSCHEDULABLE")
    assert err["details"][0]["path"] == "clusters.a"
    assert root.clusters.planned == []


def test_plan_of_containers_only_is_empty(root: Root) -> None:
    sla = ml_sla()
    sla["applications"][0]["microservices"] = [container("web")]
    assert root.http.post("/api/plan", json=sla).get_json() == {"services": [], "warnings": []}


def test_apply_and_plan_warn_of_unknown_fields(root: Root) -> None:
    sla = ml_sla()
    sla["applications"][0]["microservices"] = [container("web")]
    sla["applications"][0]["microservices"][0]["memroy"] = 5
    warning = [{"path": "applications[0].microservices[0].memroy",
                "message": "unknown field, ignored; did you mean 'memory'?"}]
    assert root.http.post("/api/plan", json=sla).get_json()["warnings"] == warning
    applied = root.http.post("/api/apply", json=sla)
    assert applied.status_code == 200 and applied.get_json()["warnings"] == warning


# -- profiles ---------------------------------------------------------------------------------------

PROFILE = {"op_ms": {"relu": 0.5}, "total_ms": 0.5, "runs": 5}


def _with_profiles(root: Root, *classes: str) -> dict[str, Any]:
    model = root.register_model()
    for device_class in classes:
        r = root.http.put(f"/api/models/tiny/versions/1/profiles/{device_class}", json=PROFILE)
        assert r.status_code == 200, r.get_json()
    return model


def _classes(root: Root) -> list[str]:
    return sorted(root.http.get("/api/models/tiny/versions/1/profiles").get_json()["profiles"])


def test_remeasure_clears_and_asks_the_best_cluster(root: Root) -> None:
    model = _with_profiles(root, "rpi4", "server")
    root.register_cluster("small", "http://small:1", active_nodes=1)
    big = root.register_cluster("big", "http://big:1", active_nodes=2)
    r = root.http.post("/api/models/tiny/versions/latest/profile", json={"device_class": "rpi4"})
    assert r.status_code == 202, r.get_json()
    assert r.get_json() == {"name": "tiny", "version": 1, "device_classes_cleared": ["rpi4"],
                            "cluster_id": big, "cluster_name": "big"}
    assert root.clusters.profiled == [("http://big:1", {"name": "tiny", "version": 1,
                                                         "sha256": model["sha256"], "device_class": "rpi4"})]
    assert _classes(root) == ["server"]
    r = root.http.post("/api/models/tiny/versions/1/profile")  # no body: every class
    assert r.status_code == 202 and r.get_json()["device_classes_cleared"] == ["server"]
    assert root.clusters.profiled[-1][1]["device_class"] is None and _classes(root) == []


def test_remeasure_bad_inputs_change_nothing(root: Root) -> None:
    _with_profiles(root, "server")
    root.register_cluster("a", "http://a:1")
    url = "/api/models/tiny/versions/1/profile"
    for body, paths in [({"device_class": 5}, ["device_class"]), ({"device_class": "a b"}, ["device_class"]),
                        ({"class": "server"}, ["class"])]:
        err = _error(root.http.post(url, json=body), 400, "INVALID_INPUT")
        assert [d["path"] for d in err["details"]] == paths
    _error(root.http.post(url, json=[1]), 400, "INVALID_INPUT")
    _error(root.http.post(url, data=b"{", content_type="application/json"), 400, "INVALID_INPUT")
    _error(root.http.post("/api/models/tiny/versions/7/profile", json={}), 404, "NOT_FOUND")
    _error(root.http.post("/api/models/nope/versions/1/profile", json={}), 404, "NOT_FOUND")
    assert _classes(root) == ["server"] and root.clusters.profiled == []


def test_remeasure_without_clusters(root: Root) -> None:
    _with_profiles(root, "server")
    err = _error(root.http.post("/api/models/tiny/versions/1/profile", json={}), 422, "UNSCHEDULABLE")
    assert err["details"] == [{"path": "clusters", "message": "no cluster registered"}]
    assert _classes(root) == ["server"]  # nothing cleared when nobody could measure again
    root.register_cluster("a", "http://a:1")
    root.register_cluster("b", "http://b:1")
    root.clusters.fail = {"http://a:1": Unschedulable("no online node of class server"),
                          "http://b:1": Unschedulable("no online node of class server")}
    _error(root.http.post("/api/models/tiny/versions/1/profile", json={}), 422, "UNSCHEDULABLE")
    root.clusters.fail["http://b:1"] = Unavailable("down")
    err = _error(root.http.post("/api/models/tiny/versions/1/profile", json={}), 503, "UNAVAILABLE")
    assert [d["path"] for d in err["details"]] == ["clusters.a", "clusters.b"]
    assert _classes(root) == []  # cleared: the next deployment measures them itself


def test_delete_profiles_all_or_one(root: Root) -> None:
    _with_profiles(root, "jetson", "rpi4", "server")
    r = root.http.delete("/api/models/tiny/versions/1/profiles/rpi4")
    assert r.status_code == 200 and r.get_json() == {"name": "tiny", "version": 1,
                                                     "device_classes_cleared": ["rpi4"]}
    again = root.http.delete("/api/models/tiny/versions/1/profiles/rpi4")
    assert again.status_code == 200 and again.get_json()["device_classes_cleared"] == []
    r = root.http.delete("/api/models/tiny/versions/latest/profiles")
    assert r.get_json()["device_classes_cleared"] == ["jetson", "server"] and _classes(root) == []
    _error(root.http.delete("/api/models/tiny/versions/1/profiles/bad%20class"), 400, "INVALID_INPUT")
    _error(root.http.delete("/api/models/tiny/versions/3/profiles"), 404, "NOT_FOUND")
    _error(root.http.delete("/api/models/nope/versions/1/profiles/server"), 404, "NOT_FOUND")


# -- model deletion ---------------------------------------------------------------------------------

def test_delete_model_refused_while_a_service_uses_it(root: Root) -> None:
    doc = _with_profiles(root, "server")
    root.register_model(data=tiny_onnx(7.0))
    shared = root.register_model(name="twin")  # same bytes as tiny v1
    [sid] = apply(root, ml_sla())["microservices"]
    err = _error(root.http.delete("/api/models/tiny"), 409, "CONFLICT")
    assert err["details"] == [{"path": f"services.{sid}", "message": "vision/classifier uses model 'tiny'"}]
    assert root.http.get("/api/models/tiny/versions/1").status_code == 200
    app_id = root.http.get(f"/api/service/{sid}").get_json()["application_id"]
    assert root.http.delete(f"/api/application/{app_id}").status_code == 200
    r = root.http.delete("/api/models/tiny")
    assert r.status_code == 200, r.get_json()
    v2 = hashlib.sha256(tiny_onnx(7.0)).hexdigest()
    assert r.get_json() == {"deleted": "tiny", "versions": [1, 2], "artifacts_deleted": [v2]}
    assert shared["sha256"] == doc["sha256"]
    assert root.http.get(f"/api/artifacts/{doc['sha256']}").status_code == 200  # twin still uses it
    assert root.http.get(f"/api/artifacts/{v2}").status_code == 404
    _error(root.http.get("/api/models/tiny/versions/latest"), 404, "NOT_FOUND")
    assert [m["name"] for m in root.http.get("/api/models/").get_json()["models"]] == ["twin"]
    assert root.register_model()["version"] == 1  # the name is free again
    assert _classes(root) == []


def test_delete_model_bad_inputs(root: Root) -> None:
    _error(root.http.delete("/api/models/nope"), 404, "NOT_FOUND")
    _error(root.http.delete("/api/models/bad%20name!"), 400, "INVALID_INPUT")


# -- the HTTP cluster client ------------------------------------------------------------------------

class _Answer:
    def __init__(self, status: int, body: Any) -> None:
        self.status_code = status
        self._body = body
        self.content = b"x" if body is not None else b""

    def json(self) -> Any:
        return self._body


class _Session:
    def __init__(self, *answers: _Answer) -> None:
        self.answers = list(answers)
        self.calls: list[tuple[str, str, Any, float]] = []

    def request(self, method: str, url: str, *, json: Any = None, timeout: float = 0.0, **_: Any) -> _Answer:
        self.calls.append((method, url, json, timeout))
        return self.answers.pop(0)


def test_http_client_plan_and_profile_paths() -> None:
    refusal = {"error": {"code": "UNSCHEDULABLE", "message": "no rpi4", "details": []}}
    session = _Session(_Answer(200, PLAN_SUMMARY), _Answer(202, {"name": "tiny"}), _Answer(200, [1]),
                       _Answer(422, refusal))
    client = HttpClusterClient(timeout=5.0, session=session, plan_timeout=90.0)
    assert client.plan("http://c:1/", {"service_id": "s"}) == PLAN_SUMMARY
    assert client.profile("http://c:1", {"name": "tiny"}) == {"name": "tiny"}
    with pytest.raises(Unavailable):
        client.plan("http://c:1", {})  # an answer that is not an object
    with pytest.raises(Unschedulable):
        client.profile("http://c:1", {})  # the cluster's own error class comes back
    assert [(m, u, t) for m, u, _, t in session.calls] == [
        ("POST", "http://c:1/api/plan", 90.0), ("POST", "http://c:1/api/models/profile", 5.0),
        ("POST", "http://c:1/api/plan", 90.0), ("POST", "http://c:1/api/models/profile", 5.0)]
