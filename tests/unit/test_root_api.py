"""The root's REST API through Flask's test client, on both store backends, with a fake cluster client.

Every request is authenticated: :class:`Root` makes an admin and its ``http`` client sends the
admin's bearer token; :meth:`Root.login_as` gives a client of another user (tokens are issued
directly, not through the slow argon2 login, except where login itself is tested)."""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Iterator
from typing import Any

import onnx
import pytest
from flask.testing import FlaskClient
from onnx import TensorProto, helper

from root_orchestrator.app import create_app
from root_orchestrator.auth import AuthService, SecurityConfig
from root_orchestrator.auth.passwords import hash_password
from root_orchestrator.auth.tokens import ACCESS
from root_orchestrator.cluster_client import ClusterClient
from root_orchestrator.openapi import ROUTES, openapi_path
from root_orchestrator.stores import Stores, open_stores
from treeline_common.clock import FakeClock
from treeline_common.errors import NotFound, TreelineError, Unavailable
from treeline_common.jobs import Placement

PUBLIC = "http://root.test:10000"
PLAN_SUMMARY = {"schedulable": True, "strategy": "dp-latency", "message": "",
                "predicted": {"latency_ms": 4.5, "objective": "latency"},
                "stages": [{"index": 0, "node_name": "n1", "flops": 8, "cut_bytes": 0,
                            "predicted_compute_ms": 1.5, "node_id": "id-1"}],
                "reasons": {"n2": "offline"}}


def tiny_onnx(scale: float = 2.0) -> bytes:
    """y = relu(x) * scale with a symbolic batch dim, as real exporters produce."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])
    s = helper.make_tensor("s", TensorProto.FLOAT, [1], [scale])
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Mul", ["r", "s"], ["y"])]
    graph = helper.make_graph(nodes, "tiny", [x], [y], initializer=[s])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return model.SerializeToString()


def ml_sla(model_ref: Any = "latest", name: str = "tiny") -> dict[str, Any]:
    return {
        "sla_version": "v2.0", "customerID": "Admin",
        "applications": [{
            "applicationID": "", "application_name": "vision", "application_namespace": "demo",
            "application_desc": "test", "microservices": [{
                "microserviceID": "", "microservice_name": "classifier", "microservice_namespace": "demo",
                "virtualization": "ml-model", "memory": 256, "vcpus": 1, "vgpus": 0, "vtpus": 0,
                "bandwidth_in": 0, "bandwidth_out": 0, "storage": 0, "state": "", "added_files": [],
                "model": {"name": name, "version": model_ref,
                          "input": {"name": "x", "shape": [1, 4], "dtype": "float32"},
                          "objective": "latency", "max_partitions": 2},
                "constraints": [], "connectivity": []}]}]}


class FakeClusterClient(ClusterClient):
    """Records calls; ``fail`` maps a cluster URL to the error its calls raise; ``plans`` maps a
    cluster URL to the plan summary it answers (default: one schedulable stage)."""

    def __init__(self) -> None:
        self.deployed: list[tuple[str, str, int, dict[str, Any]]] = []
        self.undeployed: list[tuple[str, str, int]] = []
        self.planned: list[tuple[str, dict[str, Any]]] = []
        self.profiled: list[tuple[str, dict[str, Any]]] = []
        self.plans: dict[str, Any] = {}
        self.fail: dict[str, TreelineError] = {}

    def plan(self, cluster_url: str, job: dict[str, Any]) -> dict[str, Any]:
        if cluster_url in self.fail:
            raise self.fail[cluster_url]
        self.planned.append((cluster_url, copy.deepcopy(job)))
        return copy.deepcopy(self.plans.get(cluster_url, PLAN_SUMMARY))

    def profile(self, cluster_url: str, request: dict[str, Any]) -> dict[str, Any]:
        if cluster_url in self.fail:
            raise self.fail[cluster_url]
        self.profiled.append((cluster_url, dict(request)))
        return {"accepted": True}

    def deploy(self, cluster_url: str, service_id: str, instance: int, job: dict[str, Any]) -> None:
        if cluster_url in self.fail:
            raise self.fail[cluster_url]
        self.deployed.append((cluster_url, service_id, instance, copy.deepcopy(job)))

    def undeploy(self, cluster_url: str, service_id: str, instance: int) -> None:
        if cluster_url in self.fail:
            raise self.fail[cluster_url]
        self.undeployed.append((cluster_url, service_id, instance))


_HASHES: dict[str, str] = {}


def password_hash(password: str) -> str:
    """argon2 takes ~0.2 s per hash: one per password per test session."""
    if password not in _HASHES:
        _HASHES[password] = hash_password(password)
    return _HASHES[password]


SECRET = "unit-test-signing-key-0123456789abcdef"


class Root:
    def __init__(self, stores: Stores, security: SecurityConfig | None = None,
                 clusters: ClusterClient | None = None) -> None:
        self.stores = stores
        self.clock = FakeClock()
        self.clusters: Any = clusters or FakeClusterClient()
        self.security = security or SecurityConfig(jwt_secret=SECRET)
        self.app = create_app(stores, self.clock, self.clusters, public_url=PUBLIC, security=self.security)
        self.auth: AuthService = self.app.extensions["treeline_auth"]
        self.admin = self.stores.users.find_user("root-admin") or self.add_user("root-admin", "admin")
        self.http: FlaskClient = self.login_as(self.admin)

    def add_user(self, name: str, *roles: str) -> dict[str, Any]:
        """A user whose password is ``<name>-password``; application provider unless ``roles``."""
        return self.stores.users.create_user(name, password_hash(f"{name}-password"),
                                             list(roles or ["application_provider"]), 0.0)

    def token(self, user: dict[str, Any]) -> str:
        return self.auth.tokens.issue(user, ACCESS)

    def client(self, token: str | None = None) -> FlaskClient:
        client = self.app.test_client()
        if token is not None:
            client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {token}"
        return client

    def login_as(self, user: dict[str, Any]) -> FlaskClient:
        return self.client(self.token(user))

    def cluster_client(self) -> FlaskClient:
        """A client holding a fresh cluster token (made by the admin)."""
        r = self.http.post("/api/clusters/tokens", json={"name": "test"})
        assert r.status_code == 201, r.get_json()
        return self.client(r.get_json()["token"])

    def register_model(self, name: str = "tiny", data: bytes | None = None, **query: str) -> dict[str, Any]:
        r = self.http.post(f"/api/models/{name}/versions", data=data or tiny_onnx(), query_string=query,
                           content_type="application/octet-stream")
        assert r.status_code == 201, r.get_json()
        return r.get_json()

    def register_cluster(self, name: str, url: str, **aggregate: Any) -> str:
        r = self.http.post("/api/clusters/register",
                           json={"cluster_name": name, "cluster_location": "lab", "url": url})
        assert r.status_code in (200, 201), r.get_json()
        cid = r.get_json()["cluster_id"]
        if aggregate:
            push = self.http.post(f"/api/information/{cid}", json={"aggregate": aggregate, "jobs": []})
            assert push.status_code == 200
        return cid

    def submit(self, sla: dict[str, Any] | None = None) -> str:
        r = self.http.post("/api/application/", json=sla or ml_sla())
        assert r.status_code == 200, r.get_json()
        return r.get_json()[0]["microservices"][0]


@pytest.fixture
def root(mongo_url: str) -> Iterator[Root]:
    stores = open_stores(mongo_url)
    yield Root(stores)
    stores.close()


def _error(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.get_data(as_text=True)
    body = response.get_json()
    assert body["error"]["code"] == code, body
    return body["error"]


# -- registry ------------------------------------------------------------------------------------------

def test_health_names_this_process(root: Root) -> None:
    body = root.http.get("/api/health").get_json()
    assert body == {"status": "ok", "instance_id": body["instance_id"], "name": "root",
                    "version": body["version"]}
    assert len(body["instance_id"]) == 36 and body["version"]
    assert root.http.get("/api/health").get_json()["instance_id"] == body["instance_id"]  # stable
    other = create_app(root.stores, FakeClock(), FakeClusterClient(), instance_id="another-stack")
    assert other.test_client().get("/api/health").get_json()["instance_id"] == "another-stack"


def test_register_model_returns_version_doc_with_signature(root: Root) -> None:
    data = tiny_onnx()
    doc = root.register_model(data=data, description="first", alias="champion")
    assert doc["name"] == "tiny" and doc["version"] == 1 and doc["format"] == "onnx"
    assert doc["sha256"] == hashlib.sha256(data).hexdigest() and doc["size"] == len(data)
    assert doc["description"] == "first" and doc["aliases"] == ["champion"]
    assert doc["created_at"] == root.clock.now()
    # no initializer among the inputs
    assert doc["signature"]["inputs"] == [{"name": "x", "dtype": "float32", "shape": ["batch", 4]}]
    assert doc["signature"]["outputs"] == [{"name": "y", "dtype": "float32", "shape": ["batch", 4]}]


def test_versions_latest_alias_and_listing(root: Root) -> None:
    root.register_model(data=tiny_onnx(1.0), alias="prod")
    second = root.register_model(data=tiny_onnx(3.0))
    assert second["version"] == 2
    get = root.http.get
    assert get("/api/models/tiny/versions/latest").get_json()["version"] == 2
    assert get("/api/models/tiny/versions/1").get_json()["aliases"] == ["prod"]
    assert get("/api/models/tiny/versions/prod").get_json()["version"] == 1
    moved = root.http.put("/api/models/tiny/aliases/prod", json={"version": 2})
    assert moved.status_code == 200 and moved.get_json()["version"] == 2
    assert get("/api/models/").get_json() == {"models": [{"name": "tiny", "latest_version": 2, "last_version": 2,
                                                          "aliases": {"prod": 2},
                                                          "owner": root.admin["user_id"]}]}
    assert [v["version"] for v in get("/api/models/tiny/versions").get_json()["versions"]] == [1, 2]
    _error(get("/api/models/tiny/versions/9"), 404, "NOT_FOUND")
    _error(get("/api/models/nope/versions/latest"), 404, "NOT_FOUND")


def test_artifact_download_matches_sha(root: Root) -> None:
    data = tiny_onnx(5.0)
    doc = root.register_model(data=data)
    by_version = root.http.get("/api/models/tiny/versions/latest/artifact")
    assert by_version.status_code == 200 and by_version.data == data
    by_sha = root.http.get(f"/api/artifacts/{doc['sha256']}")
    assert by_sha.data == data and by_sha.headers["Content-Length"] == str(len(data))
    assert hashlib.sha256(by_sha.data).hexdigest() == doc["sha256"]
    _error(root.http.get(f"/api/artifacts/{hashlib.sha256(b'absent').hexdigest()}"), 404, "NOT_FOUND")
    _error(root.http.get("/api/artifacts/not-a-sha"), 400, "INVALID_INPUT")


def test_artifact_put_checks_digest_and_is_idempotent(root: Root) -> None:
    data = b"partition bytes"
    sha = hashlib.sha256(data).hexdigest()
    assert root.http.put(f"/api/artifacts/{sha}", data=data).status_code == 201
    again = root.http.put(f"/api/artifacts/{sha}", data=data)
    assert again.status_code == 200 and again.get_json() == {"sha256": sha, "size": len(data)}
    wrong = hashlib.sha256(b"something else").hexdigest()
    _error(root.http.put(f"/api/artifacts/{wrong}", data=data), 422, "INTEGRITY_ERROR")
    assert root.http.get(f"/api/artifacts/{wrong}").status_code == 404


@pytest.mark.parametrize("body", [b"", b"definitely not onnx \x00\xff\x13", b"\x08\x07"])
def test_bad_onnx_is_400_naming_body(root: Root, body: bytes) -> None:
    r = root.http.post("/api/models/tiny/versions", data=body, content_type="application/octet-stream")
    err = _error(r, 400, "INVALID_INPUT")
    assert err["details"][0]["path"] == "body"
    assert root.http.get("/api/models/").get_json() == {"models": []}


def test_external_data_model_is_refused(root: Root) -> None:
    model = onnx.load_model_from_string(tiny_onnx())
    init = model.graph.initializer[0]
    init.data_location = TensorProto.EXTERNAL
    init.ClearField("float_data")
    init.external_data.add(key="location", value="weights.bin")
    answer = root.http.post("/api/models/tiny/versions", data=model.SerializeToString())
    err = _error(answer, 400, "INVALID_INPUT")
    assert "external data" in err["details"][0]["message"]


def test_bad_model_name_and_alias(root: Root) -> None:
    _error(root.http.post("/api/models/bad name!/versions", data=tiny_onnx()), 400, "INVALID_INPUT")
    _error(root.http.post("/api/models/tiny/versions", data=tiny_onnx(), query_string={"alias": "latest"}),
           400, "INVALID_INPUT")


# -- applications and services -------------------------------------------------------------------------

def test_submit_sla_creates_application_and_requested_services(root: Root) -> None:
    r = root.http.post("/api/application/", json=ml_sla())
    assert r.status_code == 200  # Oakestra's clients accept only 200
    [app] = r.get_json()  # Oakestra's shape: an array of the created applications
    assert app["_id"] == {"$oid": app["applicationID"]} and app["userId"] == root.admin["user_id"]
    assert app["application_name"] == "vision" and len(app["applicationID"]) == 24
    [sid] = app["microservices"]
    svc = root.http.get(f"/api/service/{sid}").get_json()
    assert svc["service_id"] == sid and svc["application_id"] == app["applicationID"]
    assert (svc["microservice_name"], svc["virtualization"], svc["status"]) == (
        "classifier", "ml-model", "REQUESTED")
    assert svc["model"]["name"] == "tiny" and svc["model"]["resolved"] is None
    assert svc["instances"] == [] and svc["cluster_id"] is None and svc["placement"] is None
    listed = root.http.get("/api/applications/").get_json()
    assert listed[0]["applicationID"] == app["applicationID"]
    assert root.http.get(f"/api/application/{app['applicationID']}").get_json()["microservices"] == [sid]


def test_oakestra_container_sla_is_accepted_unchanged(root: Root) -> None:
    sla = {"sla_version": "v2.0", "customerID": "Admin", "applications": [{
        "applicationID": "", "application_name": "clientserver", "application_namespace": "test",
        "application_desc": "curl", "microservices": [{
            "microserviceID": "", "microservice_name": "curl", "microservice_namespace": "test",
            "virtualization": "container", "cmd": ["sh"], "memory": 100, "vcpus": 1, "vgpus": 0, "vtpus": 0,
            "bandwidth_in": 0, "bandwidth_out": 0, "storage": 0, "code": "docker.io/curlimages/curl:7.82.0",
            "state": "", "port": "9080", "added_files": []}]}]}
    sid = root.submit(sla)
    assert root.http.get(f"/api/service/{sid}").get_json()["model"] is None
    err = _error(root.http.post(f"/api/service/{sid}/instance"), 400, "INVALID_INPUT")
    assert err["details"][0]["path"] == "virtualization"


def test_bad_sla_is_400_with_path_details(root: Root) -> None:
    sla = ml_sla()
    sla["applications"][0]["microservices"][0]["model"]["max_partitions"] = 0
    err = _error(root.http.post("/api/application/", json=sla), 400, "INVALID_INPUT")
    assert err["details"] and all(set(d) >= {"path", "message"} for d in err["details"])
    assert any("max_partitions" in d["path"] for d in err["details"])
    assert root.http.get("/api/applications/").get_json() == []
    not_json = root.http.post("/api/application/", data=b"{nope", content_type="application/json")
    _error(not_json, 400, "INVALID_INPUT")


def test_unknown_ids_are_404_json(root: Root) -> None:
    for method, path in [("get", "/api/service/abc"), ("delete", "/api/service/abc"),
                         ("post", "/api/service/abc/instance"), ("get", "/api/application/abc"),
                         ("delete", "/api/application/abc"), ("get", "/api/clusters/abc"),
                         ("get", "/api/no/such/route")]:
        _error(getattr(root.http, method)(path), 404, "NOT_FOUND")
    _error(root.http.post("/api/information/abc", json={"aggregate": {}, "jobs": []}), 404, "NOT_FOUND")


# -- instances and clusters ----------------------------------------------------------------------------

def test_instance_forwards_job_to_best_cluster_and_schedules(root: Root) -> None:
    model = root.register_model()
    root.register_cluster("small", "http://small:1", active_nodes=1, memory=1000)
    big = root.register_cluster("big", "http://big:1", active_nodes=3, memory=500)
    sid = root.submit()
    r = root.http.post(f"/api/service/{sid}/instance")
    assert r.status_code == 200
    assert r.get_json() == {"service_id": sid, "instance": 0, "cluster_id": big, "cluster_name": "big"}
    [(url, job_sid, instance, job)] = root.clusters.deployed
    assert (url, job_sid, instance) == ("http://big:1", sid, 0)
    assert job["service_id"] == sid and job["instance"] == 0 and job["root_url"] == PUBLIC
    assert job["microservice"]["microservice_name"] == "classifier"
    assert job["microservice"]["model"]["name"] == "tiny"
    # the model is referenced by digest only: no absolute URL of the root is stored with the job
    assert job["model"] == {"name": "tiny", "version": 1, "sha256": model["sha256"],
                            "signature": model["signature"]}
    svc = root.http.get(f"/api/service/{sid}").get_json()
    assert (svc["status"], svc["cluster_id"]) == ("SCHEDULED", big)
    assert svc["model"]["resolved"] == {"name": "tiny", "version": 1, "sha256": model["sha256"]}
    assert [(i["instance"], i["status"]) for i in svc["instances"]] == [(0, "SCHEDULED")]
    second = root.http.post(f"/api/service/{sid}/instance").get_json()
    assert second["instance"] == 1


def test_fallback_to_next_cluster_when_first_fails(root: Root) -> None:
    root.register_model()
    root.register_cluster("a", "http://a:1", active_nodes=5)
    b = root.register_cluster("b", "http://b:1", active_nodes=1)
    root.clusters.fail["http://a:1"] = Unavailable("connection refused")
    sid = root.submit()
    r = root.http.post(f"/api/service/{sid}/instance")
    assert r.status_code == 200 and r.get_json()["cluster_id"] == b
    assert [d[0] for d in root.clusters.deployed] == ["http://b:1"]


def test_all_clusters_failing_is_503_and_instance_failed(root: Root) -> None:
    root.register_model()
    root.register_cluster("a", "http://a:1")
    root.clusters.fail["http://a:1"] = Unavailable("down")
    sid = root.submit()
    err = _error(root.http.post(f"/api/service/{sid}/instance"), 503, "UNAVAILABLE")
    assert err["details"][0]["path"] == "clusters.a"
    svc = root.http.get(f"/api/service/{sid}").get_json()
    assert svc["status"] == "FAILED" and "down" in svc["status_detail"]


def test_inactive_clusters_are_skipped(root: Root) -> None:
    root.register_model()
    root.register_cluster("stale", "http://stale:1", active_nodes=9)
    root.clock.advance(31)
    sid = root.submit()
    err = _error(root.http.post(f"/api/service/{sid}/instance"), 422, "UNSCHEDULABLE")
    assert err["details"][0]["path"] == "clusters.stale"
    assert root.http.get("/api/clusters/").get_json()[0]["active"] is False
    fresh = root.register_cluster("fresh", "http://fresh:1")
    assert root.http.post(f"/api/service/{sid}/instance").get_json()["cluster_id"] == fresh


def test_missing_model_or_version_names_the_field(root: Root) -> None:
    root.register_cluster("a", "http://a:1")
    sid = root.submit(ml_sla(name="ghost"))
    err = _error(root.http.post(f"/api/service/{sid}/instance"), 404, "NOT_FOUND")
    assert err["details"][0]["path"] == "model.name"
    root.register_model()
    sla = ml_sla(model_ref=7)
    sla["applications"][0]["application_name"] = "vision7"
    sid = root.submit(sla)
    err = _error(root.http.post(f"/api/service/{sid}/instance"), 404, "NOT_FOUND")
    assert err["details"][0]["path"] == "model.version"
    assert root.clusters.deployed == []


def test_cluster_push_updates_status_and_placement(root: Root) -> None:
    root.register_model()
    cid = root.register_cluster("a", "http://a:1")
    sid = root.submit()
    root.http.post(f"/api/service/{sid}/instance")
    placement = {"deployment_id": f"{sid}-0", "generation": 1, "strategy": "flops-balanced", "stages": []}
    push = {"aggregate": {"active_nodes": 2, "memory": 2048},
            "jobs": [{"service_id": sid, "instance": 0, "status": "RUNNING", "status_detail": "2 stages",
                      "placement": placement}]}
    root.clock.advance(5)
    r = root.http.post(f"/api/information/{cid}", json=push)
    assert r.status_code == 200 and r.get_json() == {"updated": 1, "ignored": [], "release": []}
    svc = root.http.get(f"/api/service/{sid}").get_json()
    typed = Placement.from_dict(placement).to_dict()  # stored as decoded: defaults filled in
    assert (svc["status"], svc["status_detail"], svc["placement"]) == ("RUNNING", "2 stages", typed)
    assert svc["instances"][0]["placement"] == typed
    [cluster] = root.http.get("/api/clusters/").get_json()
    assert cluster["aggregate"] == {"active_nodes": 2, "memory": 2048}
    assert cluster["last_push"] == root.clock.now()
    assert cluster["active"] is True


def test_push_ignores_foreign_unknown_and_malformed_jobs(root: Root) -> None:
    root.register_model()
    a = root.register_cluster("a", "http://a:1", active_nodes=2)
    b = root.register_cluster("b", "http://b:1", active_nodes=1)
    sid = root.submit()
    root.http.post(f"/api/service/{sid}/instance")  # lands on a
    jobs = [{"service_id": sid, "instance": 0, "status": "FAILED"},  # b does not own it
            {"service_id": "nope", "instance": 0, "status": "RUNNING"}]
    body = root.http.post(f"/api/information/{b}", json={"aggregate": {}, "jobs": jobs}).get_json()
    assert body["updated"] == 0 and [i["path"] for i in body["ignored"]] == [f"jobs[{i}]" for i in range(2)]
    svc = root.http.get(f"/api/service/{sid}").get_json()
    assert (svc["status"], svc["cluster_id"]) == ("SCHEDULED", a)
    # a malformed push is refused whole, naming every bad field, and changes nothing
    bad = [{"service_id": sid, "instance": 0, "status": "BOGUS"}, "garbage",
           {"service_id": sid, "instance": "x", "status": "RUNNING"}]
    answer = root.http.post(f"/api/information/{a}", json={"aggregate": {}, "jobs": bad})
    _error(answer, 400, "INVALID_INPUT")
    paths = {d["path"] for d in answer.get_json()["error"]["details"]}
    assert paths == {"jobs[0].status", "jobs[1]", "jobs[2].instance"}
    assert root.http.get(f"/api/service/{sid}").get_json()["status"] == "SCHEDULED"
    _error(root.http.post(f"/api/information/{a}", json={"aggregate": [], "jobs": {}}), 400, "INVALID_INPUT")


def test_delete_instance_forwards_and_resets(root: Root) -> None:
    root.register_model()
    root.register_cluster("a", "http://a:1")
    sid = root.submit()
    root.http.post(f"/api/service/{sid}/instance")
    r = root.http.delete(f"/api/service/{sid}/instance/0")
    assert r.status_code == 200 and root.clusters.undeployed == [("http://a:1", sid, 0)]
    svc = root.http.get(f"/api/service/{sid}").get_json()
    assert svc["instances"] == [] and svc["status"] == "REQUESTED" and svc["cluster_id"] is None
    _error(root.http.delete(f"/api/service/{sid}/instance/0"), 404, "NOT_FOUND")
    # a number is never reused: a late push about instance 0 must not land on its successor
    assert root.http.post(f"/api/service/{sid}/instance").get_json()["instance"] == 1


def test_delete_application_undeploys_its_instances(root: Root) -> None:
    root.register_model()
    root.register_cluster("a", "http://a:1")
    sid = root.submit()
    root.http.post(f"/api/service/{sid}/instance")
    app_id = root.http.get(f"/api/service/{sid}").get_json()["application_id"]
    root.clusters.fail["http://a:1"] = NotFound("already gone")  # a cluster that forgot it is fine
    r = root.http.delete(f"/api/application/{app_id}")
    assert r.status_code == 200 and r.get_json()["services"] == [sid]
    assert r.get_json()["undeploy_failures"] == []
    _error(root.http.get(f"/api/service/{sid}"), 404, "NOT_FOUND")


def test_register_cluster_validation_and_idempotency(root: Root) -> None:
    err = _error(root.http.post("/api/clusters/register", json={"cluster_name": "", "url": "ftp://x"}),
                 400, "INVALID_INPUT")
    assert {d["path"] for d in err["details"]} == {"cluster_name", "url"}
    first = root.http.post("/api/clusters/register", json={"cluster_name": "c", "url": "http://c:1"})
    again = root.http.post("/api/clusters/register", json={"cluster_name": "c", "url": "http://c:2/"})
    assert (first.status_code, again.status_code) == (201, 200)
    assert first.get_json() == again.get_json()
    assert root.http.get("/api/clusters/").get_json()[0]["url"] == "http://c:2"


def test_openapi_lists_exactly_the_served_routes(root: Root) -> None:
    served = {(m, rule.rule) for rule in root.app.url_map.iter_rules()
              for m in rule.methods - {"HEAD", "OPTIONS"}}
    assert served == {(r.method, r.rule) for r in ROUTES}
    doc = root.http.get("/api/openapi.json").get_json()
    assert doc["openapi"].startswith("3.")
    for r in ROUTES:
        assert r.method.lower() in doc["paths"][openapi_path(r.rule)]
    json.dumps(doc)


# -- persistence ---------------------------------------------------------------------------------------

def test_data_survives_reopen(mongo_url: str) -> None:
    url = mongo_url
    first = Root(open_stores(url))
    doc = first.register_model(alias="prod")
    cid = first.register_cluster("a", "http://a:1")
    sid = first.submit()
    first.stores.close()
    second = Root(open_stores(url))
    try:
        assert second.http.get("/api/models/tiny/versions/prod").get_json()["sha256"] == doc["sha256"]
        assert second.http.get(f"/api/artifacts/{doc['sha256']}").data == tiny_onnx()
        assert second.http.get(f"/api/service/{sid}").get_json()["status"] == "REQUESTED"
        assert second.http.get(f"/api/clusters/{cid}").get_json()["cluster_name"] == "a"
        assert second.register_model()["version"] == 2
    finally:
        second.stores.close()


def test_push_racing_the_forward_is_not_regressed(root: Root) -> None:
    """A cluster that reports DEPLOYING before its 202 reaches us keeps DEPLOYING, and owns the instance."""
    root.register_model()
    cid = root.register_cluster("a", "http://a:1")
    sid = root.submit()
    http = root.http
    real_deploy = root.clusters.deploy

    def deploy_and_push(url: str, service_id: str, instance: int, job: dict[str, Any]) -> None:
        real_deploy(url, service_id, instance, job)
        push = {"jobs": [{"service_id": service_id, "instance": instance, "status": "DEPLOYING",
                          "status_detail": "downloading"}]}
        assert http.post(f"/api/information/{cid}", json=push).get_json()["updated"] == 1

    root.clusters.deploy = deploy_and_push  # type: ignore[method-assign]
    assert http.post(f"/api/service/{sid}/instance").status_code == 200
    svc = http.get(f"/api/service/{sid}").get_json()
    assert (svc["status"], svc["status_detail"], svc["cluster_id"]) == ("DEPLOYING", "downloading", cid)


def test_cluster_requested_push_does_not_move_status_back(root: Root) -> None:
    root.register_model()
    cid = root.register_cluster("a", "http://a:1")
    sid = root.submit()
    root.http.post(f"/api/service/{sid}/instance")
    assert root.http.get(f"/api/service/{sid}").get_json()["status"] == "SCHEDULED"
    push = {"aggregate": {}, "jobs": [{"service_id": sid, "instance": 0, "status": "REQUESTED",
                                       "status_detail": "accepted"}]}
    assert root.http.post(f"/api/information/{cid}", json=push).get_json()["updated"] == 1
    svc = root.http.get(f"/api/service/{sid}").get_json()
    assert (svc["status"], svc["status_detail"]) == ("SCHEDULED", "accepted")
    push["jobs"][0]["status"] = "DEGRADED"
    assert root.http.post(f"/api/information/{cid}", json=push).get_json()["updated"] == 1
    assert root.http.get(f"/api/service/{sid}").get_json()["status"] == "DEGRADED"


def test_pushed_events_are_kept_once_and_listed(root: Root) -> None:
    root.register_model()
    cid = root.register_cluster("a", "http://a:1")
    sid = root.submit()
    root.http.post(f"/api/service/{sid}/instance")
    replan = {"ts": 10.0, "kind": "replan", "cause": "node n-2 offline", "old_cost_ms": 9.0,
              "new_cost_ms": 12.0, "duration_s": 1.2, "generation": 2}
    job = {"service_id": sid, "instance": 0, "status": "RUNNING", "events": [replan]}
    for _ in range(2):  # a cluster re-sends its recent events with every push
        pushed = root.http.post(f"/api/information/{cid}", json={"aggregate": {}, "jobs": [job]})
        assert pushed.status_code == 200
    later = {"ts": 20.0, "kind": "kept", "cause": "node n-3 joined"}
    root.http.post(f"/api/information/{cid}",
                   json={"aggregate": {}, "jobs": [dict(job, events=[replan, later])]})
    body = root.http.get(f"/api/service/{sid}/events").get_json()
    [choice] = [e for e in body["events"] if e["kind"] == "cluster_choice"]  # the root's own event
    assert choice["chosen"] == "a" and choice["cause"] == "deploy"
    assert [e for e in body["events"] if e is not choice] == [dict(replan, instance=0), dict(later, instance=0)]
    _error(root.http.get("/api/service/nope/events"), 404, "NOT_FOUND")


@pytest.mark.parametrize("privacy, shown", [(None, False), ({"encrypt_tensors": True}, True),
                                            ({"authenticate_callers": False}, False)])
def test_caller_key_is_shown_only_for_services_whose_callers_sign(root: Root, privacy: Any, shown: bool) -> None:
    root.register_model()
    cid = root.register_cluster("a", "http://a:1")
    sla = ml_sla()
    if privacy is not None:
        sla["applications"][0]["microservices"][0]["model"]["privacy"] = privacy
    sid = root.submit(sla)
    root.http.post(f"/api/service/{sid}/instance")
    job = {"service_id": sid, "instance": 0, "status": "RUNNING", "caller_key": "ab" * 32}
    assert root.http.post(f"/api/information/{cid}", json={"aggregate": {}, "jobs": [job]}).status_code == 200
    svc = root.http.get(f"/api/service/{sid}").get_json()
    assert (svc.get("caller_key") == "ab" * 32) is shown
