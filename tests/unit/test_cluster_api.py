"""The cluster REST layer over an in-memory store: validation errors name their fields; the
OpenAPI document lists exactly the served routes, with the credential each one checks."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from typing import Any

import jsonschema
import pytest
from flask.testing import FlaskClient

from cluster_orchestrator.api import ClusterAccess, create_app, served_credentials
from cluster_orchestrator.nodes import JoinTokens
from cluster_orchestrator.openapi import ROUTES, Credential, openapi_path
from cluster_orchestrator.orchestrator import ClusterConfig, ClusterOrchestrator
from cluster_orchestrator.root_client import RootClient
from cluster_orchestrator.store import InMemoryClusterStateStore
from model_zoo.tiny import tiny_dag_bytes
from treeline_common import topics
from treeline_common.clock import FakeClock
from treeline_common.jobs import JobRequest, ModelRef
from treeline_common.messages import NodeTelemetry, ProfileResult

REG = {"name": "n1", "profile": "server", "emulated": True, "arch": "x86_64", "cpu_count": 4,
       "memory_limit_mb": 4096, "speed_factor": 1.0, "accelerators": [], "battery": None, "labels": [],
       "data_endpoint": "tcp://127.0.0.1:7001"}


class RecordingBus:
    def __init__(self) -> None:
        self.sent: list[tuple[str, Any]] = []

    def publish(self, topic: str, message: Any) -> None:
        self.sent.append((topic, message))


@pytest.fixture()
def client() -> Iterator[FlaskClient]:
    config = ClusterConfig(name="c1", root_url="http://127.0.0.1:9", public_url="http://127.0.0.1:10100",
                           mqtt_host="127.0.0.1", mqtt_port=1883)
    store = InMemoryClusterStateStore()
    store.set_setting("cluster_id", "cid-1")
    core = ClusterOrchestrator(config, store, RootClient(config.root_url), RecordingBus(), FakeClock())
    yield create_app(core).test_client()


def test_register_returns_connection_details_and_is_idempotent(client: FlaskClient) -> None:
    first = client.post("/api/node/register", json=REG)
    assert first.status_code == 200
    body = first.get_json()
    assert body == {"node_id": body["node_id"], "cluster_id": "cid-1", "mqtt_host": "127.0.0.1",
                    "mqtt_port": 1883, "telemetry_interval": 2.0}
    assert client.post("/api/node/register", json=REG).get_json()["node_id"] == body["node_id"]
    nodes = client.get("/api/nodes").get_json()["nodes"]
    assert [(n["name"], n["online"]) for n in nodes] == [("n1", False)]


@pytest.mark.parametrize("change, paths", [
    ({"name": None}, ["name"]),
    ({"cpu_count": "four", "speed_factor": 0}, ["cpu_count", "speed_factor"]),
    ({"data_endpoint": "127.0.0.1:7001", "labels": "x"}, ["labels", "data_endpoint"]),
    ({"memory_limit_mb": True}, ["memory_limit_mb"]),
])
def test_register_rejects_bad_fields_by_name(client: FlaskClient, change: dict, paths: list[str]) -> None:
    body = {k: v for k, v in {**REG, **change}.items() if v is not None}
    answer = client.post("/api/node/register", json=body)
    assert answer.status_code == 400
    error = answer.get_json()["error"]
    assert error["code"] == "INVALID_INPUT"
    assert sorted(d["path"] for d in error["details"]) == sorted(paths)


def test_register_rejects_non_json(client: FlaskClient) -> None:
    answer = client.post("/api/node/register", data=b"nope")  # no JSON content type
    assert answer.status_code == 415 and answer.get_json()["error"]["code"] == "UNSUPPORTED_MEDIA_TYPE"
    answer = client.post("/api/node/register", data=b"nope", content_type="application/json")
    assert answer.status_code == 400 and answer.get_json()["error"]["code"] == "INVALID_INPUT"


def test_job_validation_and_unknown_deployment(client: FlaskClient) -> None:
    answer = client.post("/api/service/s1/0", json={"service_id": "other", "model": {"sha256": "xyz"}})
    assert answer.status_code == 400
    paths = {d["path"] for d in answer.get_json()["error"]["details"]}
    assert {"service_id", "model.sha256", "model.name", "model.version"} <= paths
    assert any(p.startswith("microservice") for p in paths)
    assert client.get("/api/deployments/s1/0").status_code == 404
    assert client.delete("/api/service/s1/0").status_code == 404


def test_health_and_status(client: FlaskClient) -> None:
    assert client.get("/api/health").get_json()["status"] == "ok"
    status = client.get("/status").get_json()
    assert status["cluster_id"] == "cid-1" and status["aggregate"]["active_nodes"] == 0


# -- health, dry-run plan and profile re-measure --------------------------------------------------------

class FakeRoot(RootClient):
    """The root as the cluster sees it: one model's bytes, stored profiles, recorded PUTs."""

    def __init__(self, model: bytes) -> None:
        super().__init__("http://root.test:10000")
        self.model = model
        self.profiles: dict[str, dict[str, Any]] = {}
        self.put: list[tuple[str, int, str, dict[str, Any]]] = []
        self.downloads = 0

    def download(self, url: str, expected_sha256: str) -> bytes:
        self.downloads += 1
        assert url == f"http://root.test:10000/api/artifacts/{expected_sha256}"
        return self.model

    def model_profiles(self, name: str, version: Any) -> dict[str, dict[str, Any]]:
        return dict(self.profiles)

    def put_model_profile(self, name: str, version: Any, device_class: str, profile: dict[str, Any]) -> None:
        self.put.append((name, version, device_class, profile))

    def put_artifact(self, sha256: str, data: bytes) -> None:
        raise AssertionError("a dry run publishes no artifact")


class Cluster:
    def __init__(self) -> None:
        self.model = tiny_dag_bytes(0)
        self.sha256 = hashlib.sha256(self.model).hexdigest()
        config = ClusterConfig(name="c1", root_url="http://root.test:10000", public_url="http://c1:10100",
                               mqtt_host="127.0.0.1", mqtt_port=1883, profile_timeout=5.0)
        store = InMemoryClusterStateStore()
        store.set_setting("cluster_id", "cid-1")
        self.clock = FakeClock()
        self.bus = RecordingBus()
        self.root = FakeRoot(self.model)
        self.core = ClusterOrchestrator(config, store, self.root, self.bus, self.clock)
        self.http = create_app(self.core, instance_id="cluster-instance").test_client()

    def node(self, name: str, profile: str, online: bool = True, memory_limit_mb: int = 4096) -> str:
        body = {**REG, "name": name, "profile": profile, "device_class": profile,
                "memory_limit_mb": memory_limit_mb}
        node_id = self.http.post("/api/node/register", json=body).get_json()["node_id"]
        if online:
            self.core.on_telemetry(node_id, NodeTelemetry(
                node_id=node_id, ts=self.clock.now(), cpu_percent=5.0, cpu_count=4, memory_percent=40.0,
                memory_total_mb=8000, memory_available_mb=3000, memory_limit_mb=memory_limit_mb,
                profile=profile))
        return node_id

    def job(self, **model: Any) -> dict[str, Any]:
        ms = {"microserviceID": "", "microservice_name": "clf", "microservice_namespace": "demo",
              "virtualization": "ml-model", "memory": 256, "vcpus": 1, "vgpus": 0, "vtpus": 0,
              "bandwidth_in": 0, "bandwidth_out": 0, "storage": 0, "state": "", "added_files": [],
              "model": {"name": "tiny", "version": 1, "max_partitions": 2, **model},
              "constraints": [], "connectivity": []}
        return JobRequest(service_id="s1", instance=0, microservice=ms,
                          model=ModelRef(name="tiny", version=1, sha256=self.sha256),
                          root_url="http://root.test:10000").to_dict()


@pytest.fixture()
def cluster() -> Cluster:
    return Cluster()


def test_health_names_the_cluster_instance(cluster: Cluster, client: FlaskClient) -> None:
    assert cluster.http.get("/api/health").get_json() == {
        "status": "ok", "instance_id": "cluster-instance", "name": "c1",
        "version": cluster.http.get("/api/health").get_json()["version"]}
    first, second = (client.get("/api/health").get_json()["instance_id"] for _ in range(2))
    assert first == second and len(first) == 36  # one id per started app, stable while it runs


def test_plan_decides_without_deploying(cluster: Cluster) -> None:
    cluster.node("server-1", "server")
    cluster.node("rpi-1", "rpi4")
    cluster.node("gone", "server", online=False)
    cluster.root.profiles = {"server": {"op_ms": {}, "total_ms": 1.0}}
    r = cluster.http.post("/api/plan", json=cluster.job())
    assert r.status_code == 200, r.get_json()
    body = r.get_json()
    assert body["schedulable"] is True and body["strategy"]
    assert body["stages"] and {s["node_name"] for s in body["stages"]} <= {"server-1", "rpi-1"}
    assert [s["index"] for s in body["stages"]] == list(range(len(body["stages"])))
    assert all(s["flops"] > 0 for s in body["stages"]) and body["stages"][-1]["cut_bytes"] == 0
    assert "gone" in body["reasons"]  # keyed by node name, offline filtered with its reason
    assert body["profiles"] == {"stored": ["server"], "missing": ["rpi4"]}
    assert "latency_ms" in body["predicted"]
    # nothing published, committed or measured
    assert cluster.bus.sent == [] and cluster.core.book.list_deployments() == []
    cluster.http.post("/api/plan", json=cluster.job())
    assert cluster.root.downloads == 1  # the model cache serves the second plan


def test_plan_unschedulable_is_a_result(cluster: Cluster) -> None:
    cluster.node("off", "server", online=False)
    body = cluster.http.post("/api/plan", json=cluster.job()).get_json()
    assert body["schedulable"] is False and body["stages"] == [] and "off" in body["reasons"]


def test_plan_bad_inputs(cluster: Cluster) -> None:
    for bad, path in [({**cluster.job(), "model": {"sha256": "x"}}, "model.sha256"),
                      ({**cluster.job(), "instance": -1}, "instance")]:
        answer = cluster.http.post("/api/plan", json=bad)
        assert answer.status_code == 400, answer.get_json()
        assert path in {d["path"] for d in answer.get_json()["error"]["details"]}
    no_model = cluster.job()
    del no_model["microservice"]["model"]
    answer = cluster.http.post("/api/plan", json=no_model)
    assert answer.status_code == 400
    assert any(d["path"].startswith("microservice") for d in answer.get_json()["error"]["details"])
    assert cluster.http.post("/api/plan", data=b"[]", content_type="application/json").status_code == 400
    cluster.root.model = cluster.model = b"not onnx"
    cluster.sha256 = hashlib.sha256(cluster.model).hexdigest()
    answer = cluster.http.post("/api/plan", json=cluster.job())
    assert answer.status_code == 400 and answer.get_json()["error"]["details"][0]["path"] == "model.sha256"


def _profile_body(cluster: Cluster, **extra: Any) -> dict[str, Any]:
    return {"name": "tiny", "version": 1, "sha256": cluster.sha256, "device_class": None, **extra}


def test_remeasure_asks_one_node_per_class_and_puts_results(cluster: Cluster) -> None:
    server = cluster.node("server-1", "server")
    cluster.node("server-2", "server")
    cluster.node("rpi-1", "rpi4")
    r = cluster.http.post("/api/models/profile", json=_profile_body(cluster, device_class="server"))
    assert r.status_code == 202, r.get_json()
    assert r.get_json() == {"name": "tiny", "version": 1, "device_classes": ["server"],
                            "nodes": {"server": "server-1"}}
    deadline = time.monotonic() + 5
    while not cluster.bus.sent and time.monotonic() < deadline:
        time.sleep(0.01)
    [(topic, command)] = cluster.bus.sent
    assert topic == topics.control_profile(server) and command.sha256 == cluster.sha256
    # the node fetches the model from its cluster's cache (filled from the root), as for a deployment
    assert command.artifact_url == f"http://c1:10100/api/artifacts/{cluster.sha256}"
    assert cluster.core.artifacts.get(cluster.sha256) == cluster.model
    cluster.core.on_profile_result(server, ProfileResult(
        node_id=server, request_id=command.request_id, sha256=cluster.sha256, device_class="server",
        op_ms={"a": 1.0}, total_ms=1.0, runs=20))
    while not cluster.root.put and time.monotonic() < deadline:
        time.sleep(0.01)
    [(name, version, device_class, profile)] = cluster.root.put
    assert (name, version, device_class, profile["op_ms"]) == ("tiny", 1, "server", {"a": 1.0})


def test_remeasure_refuses_without_a_node_of_the_class(cluster: Cluster) -> None:
    cluster.node("server-1", "server")
    cluster.node("rpi-off", "rpi4", online=False)
    answer = cluster.http.post("/api/models/profile", json=_profile_body(cluster, device_class="rpi4"))
    assert answer.status_code == 422 and answer.get_json()["error"]["code"] == "UNSCHEDULABLE"
    assert cluster.bus.sent == []


@pytest.mark.parametrize("change, paths", [
    ({"name": ""}, ["name"]),
    ({"version": 0, "sha256": "abc"}, ["sha256", "version"]),
    ({"version": True, "device_class": "bad class"}, ["device_class", "version"]),
])
def test_remeasure_bad_inputs(cluster: Cluster, change: dict[str, Any], paths: list[str]) -> None:
    answer = cluster.http.post("/api/models/profile", json=_profile_body(cluster, **change))
    assert answer.status_code == 400
    assert sorted(d["path"] for d in answer.get_json()["error"]["details"]) == paths


def test_plan_leaves_the_model_where_a_deployment_expects_it(cluster: Cluster) -> None:
    """The parsed-model cache is shared with the deployer, so the bytes a dry run downloads must
    land in the cluster's artifact cache too (nodes fetch the model there to profile it)."""
    cluster.node("server-1", "server")
    assert cluster.core.artifacts.get(cluster.sha256) is None
    assert cluster.http.post("/api/plan", json=cluster.job()).status_code == 200
    assert cluster.core.artifacts.get(cluster.sha256) == cluster.model
    assert cluster.http.get(f"/api/artifacts/{cluster.sha256}").data == cluster.model


# -- the OpenAPI document ---------------------------------------------------------------------------

ROOT_TOKEN = "root-token-0123456789abcdef"
INITIAL_JOIN = "initial-join-token-0123456789"


class Secured:
    """A cluster app with every check on: the root's token and join tokens (an initial one given)."""

    def __init__(self) -> None:
        config = ClusterConfig(name="c1", root_url="http://127.0.0.1:9", public_url="http://c1:10100",
                               mqtt_host="127.0.0.1", mqtt_port=1883)
        store = InMemoryClusterStateStore()
        store.set_setting("cluster_id", "cid-1")
        core = ClusterOrchestrator(config, store, RootClient(config.root_url), RecordingBus(), FakeClock())
        self.tokens = JoinTokens(store, core.clock)
        self.tokens.ensure_initial(INITIAL_JOIN)
        self.other_join = self.tokens.create("node")[1]  # a join token that is not the initial one
        self.app = create_app(core, access=ClusterAccess(root_token=ROOT_TOKEN, join_tokens=self.tokens))
        self.http = self.app.test_client()


def _served(app: Any) -> set[tuple[str, str]]:
    return {(m, rule.rule) for rule in app.url_map.iter_rules() for m in rule.methods - {"HEAD", "OPTIONS"}
            if rule.endpoint != "static"}


def test_openapi_lists_exactly_the_served_routes(client: FlaskClient) -> None:
    secured = Secured()
    served = _served(secured.app)
    assert served == {(r.method, r.rule) for r in ROUTES}
    credentials = served_credentials(secured.app)
    assert set(credentials) == served, "every view declares its credential"
    for http in (secured.http, client):  # public on a cluster with credentials, and on one without
        answer = http.get("/api/openapi.json")
        assert answer.status_code == 200
        doc = answer.get_json()
        assert doc["openapi"] == "3.1.0" and doc["servers"][0]["url"].startswith("http://")
        listed = {(method.upper(), path) for path, ops in doc["paths"].items() for method in ops}
        assert listed == {(method, openapi_path(rule)) for method, rule in served}
        for (method, rule), credential in credentials.items():
            op = doc["paths"][openapi_path(rule)][method.lower()]
            assert op["security"] == credential.security and op["x-treeline-access"] == credential.summary
            for alternative in op["security"]:
                assert set(alternative) <= set(doc["components"]["securitySchemes"])
            ref = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema", {})
            if "$ref" in ref:
                assert ref["$ref"].removeprefix("#/components/schemas/") in doc["components"]["schemas"]
    root_routes = [("POST", "/api/service/<service_id>/<instance>"), ("POST", "/api/plan"),
                   ("POST", "/api/models/profile"), ("DELETE", "/api/service/<service_id>/<instance>")]
    assert {credentials[route] for route in root_routes} == {Credential.ROOT}
    assert credentials[("POST", "/api/node/register")] is Credential.JOIN
    assert credentials[("GET", "/api/openapi.json")] is Credential.PUBLIC


def _concrete(rule: str) -> str:
    return rule.replace("<service_id>", "s1").replace("<instance>", "0").replace("<token_id>", "nope") \
        .replace("<sha256>", "0" * 64)


def test_each_route_checks_the_credential_the_document_declares() -> None:
    secured = Secured()
    tokens = {"rootToken": [ROOT_TOKEN], "joinToken": [INITIAL_JOIN, secured.other_join],
              "initialJoinToken": [INITIAL_JOIN]}
    for (method, rule), credential in served_credentials(secured.app).items():
        path = _concrete(rule)
        accepted = {token for alternative in credential.security for scheme in alternative
                    for token in tokens[scheme]}

        def status(token: str | None, method: str = method, path: str = path) -> int:
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            return secured.http.open(path, method=method, headers=headers, json={}).status_code

        assert (status(None) == 401) == (credential is not Credential.PUBLIC), (method, rule)
        for token in accepted:
            assert status(token) != 401, (method, rule, token)
        for token in {ROOT_TOKEN, INITIAL_JOIN, secured.other_join, "wrong-token"} - accepted:
            if credential is not Credential.PUBLIC:
                assert status(token) == 401, (method, rule, token)


def test_the_body_schemas_accept_what_the_routes_accept(cluster: Cluster) -> None:
    doc = cluster.http.get("/api/openapi.json").get_json()

    def valid(name: str, body: Any) -> bool:
        schema = {**doc, "$ref": f"#/components/schemas/{name}"}
        return not list(jsonschema.Draft202012Validator(schema).iter_errors(body))

    job = cluster.job()
    assert valid("JobRequest", job) and valid("NodeRegistration", REG)
    assert valid("ProfileRequest", _profile_body(cluster)) and valid("JoinTokenRequest", {"name": "n"})
    for name, bad in [("JobRequest", {**job, "instance": -1}),
                      ("JobRequest", {**job, "model": {**job["model"], "sha256": "xyz"}}),
                      ("JobRequest", {**job, "microservice": {"microservice_name": "x"}}),
                      ("NodeRegistration", {**REG, "cpu_count": 0}),
                      ("NodeRegistration", {**REG, "data_endpoint": "127.0.0.1:7001"}),
                      ("ProfileRequest", _profile_body(cluster, device_class="bad class")),
                      ("JoinTokenRequest", {"name": "x" * 129})]:
        assert not valid(name, bad), (name, bad)
    assert cluster.http.post("/api/plan", json={**job, "instance": -1}).status_code == 400
