"""The cluster's REST routes under malformed bodies, over real HTTP: never a 5xx.

The cluster app (in-memory store, a bus that records, a root nobody answers) is served by
werkzeug's threaded server on loopback, as ``python -m cluster_orchestrator`` serves it. Hypothesis
sends register, deploy, plan and profile requests whose bodies are random bytes, random JSON
(any nesting), valid documents with one field replaced by random JSON, or valid documents under
another content type; each answer must be < 500 and, when an error, carry
``{"error": {code, message, details}}``.

Schemathesis over the cluster's own OpenAPI document (``GET /api/openapi.json``), on a cluster app
with every credential check on (the root's token, join tokens): each operation is sent the token its
declared ``security`` accepts (the root's token, else the initial join token), positive and
negative cases, about 20 s; no answer may be a 5xx.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from werkzeug.serving import make_server

from benchmarks.hardening import fuzz_root
from cluster_orchestrator.api import ClusterAccess, create_app
from cluster_orchestrator.nodes import JoinTokens
from cluster_orchestrator.orchestrator import ClusterConfig, ClusterOrchestrator
from cluster_orchestrator.root_client import RootClient
from cluster_orchestrator.store import InMemoryClusterStateStore
from model_zoo.tiny import tiny_dag_bytes
from treeline_common.clock import FakeClock
from treeline_common.jobs import JobRequest, ModelRef
from treeline_common.messages import NodeTelemetry
from treeline_common.wsgi import make_http_server

pytestmark = pytest.mark.integration

REGISTER = {"name": "n1", "profile": "server", "emulated": True, "arch": "x86_64", "cpu_count": 4,
            "memory_limit_mb": 4096, "speed_factor": 1.0, "accelerators": [], "battery": None, "labels": [],
            "data_endpoint": "tcp://127.0.0.1:7001"}
MICROSERVICE = {"microserviceID": "", "microservice_name": "clf", "microservice_namespace": "demo",
                "virtualization": "ml-model", "memory": 256, "vcpus": 1, "vgpus": 0, "vtpus": 0,
                "bandwidth_in": 0, "bandwidth_out": 0, "storage": 0, "state": "", "added_files": [],
                "model": {"name": "tiny", "version": 1, "max_partitions": 2},
                "constraints": [], "connectivity": []}
MODEL = tiny_dag_bytes(0)
MODEL_SHA = hashlib.sha256(MODEL).hexdigest()  # in the cluster's cache: no root needed to plan
JOB = JobRequest(service_id="s1", instance=0, microservice=MICROSERVICE,
                 model=ModelRef(name="tiny", version=1, sha256=MODEL_SHA),
                 root_url="http://127.0.0.1:9").to_dict()
PROFILE = {"name": "tiny", "version": 1, "sha256": MODEL_SHA, "device_class": None}
ROUTES = [("POST", "/api/node/register", REGISTER), ("POST", "/api/service/s1/0", JOB),
          ("POST", "/api/plan", JOB), ("POST", "/api/models/profile", PROFILE)]


class _Bus:
    def publish(self, topic: str, message: Any) -> None:
        pass


@contextmanager
def artifactless_root() -> Iterator[str]:
    """A root that answers 404 for every artifact: a fuzzed job naming a model the cluster has not
    cached is then the caller's mistake (400 naming model.sha256), not an unreachable root (503)."""
    def no_artifacts(environ: Any, start_response: Any) -> list[bytes]:
        start_response("404 NOT FOUND", [("Content-Type", "application/json")])
        return [b'{"error": {"code": "NOT_FOUND", "message": "no such artifact", "details": []}}']

    root = make_server("127.0.0.1", 0, no_artifacts, threaded=True)
    thread = threading.Thread(target=root.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{root.port}"
    finally:
        root.shutdown()
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def cluster_url() -> Iterator[str]:
    with artifactless_root() as root_url:
        yield from _cluster(root_url)


def _cluster(root_url: str) -> Iterator[str]:
    config = ClusterConfig(name="fuzz", root_url=root_url, public_url="http://127.0.0.1:10100",
                           mqtt_host="127.0.0.1", mqtt_port=1883)
    store = InMemoryClusterStateStore()
    store.set_setting("cluster_id", "cid-fuzz")
    core = ClusterOrchestrator(config, store, RootClient(config.root_url, timeout=0.2), _Bus(), FakeClock())
    core.artifacts.put(MODEL_SHA, MODEL)
    server = make_server("127.0.0.1", 0, create_app(core), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.port}"
    server.shutdown()
    thread.join(timeout=10)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20)


def _paths(doc: dict[str, Any], prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """The key path of every field of ``doc``, nested ones included."""
    found = []
    for key, value in doc.items():
        found.append((*prefix, key))
        if isinstance(value, dict):
            found.extend(_paths(value, (*prefix, key)))
    return sorted(found)


@st.composite
def bodies(draw: st.DrawFn, valid: dict[str, Any]) -> tuple[bytes, str | None]:
    kind = draw(st.sampled_from(["bytes", "json", "mutated", "deep", "content-type"]))
    if kind == "bytes":
        return draw(st.binary(max_size=200)), "application/json"
    if kind == "json":
        return json.dumps(draw(JSON)).encode(), "application/json"
    if kind == "deep":
        depth = draw(st.integers(min_value=50, max_value=5000))
        return b"[" * depth + b"]" * draw(st.integers(min_value=0, max_value=depth)), "application/json"
    doc = json.loads(json.dumps(valid))
    if kind == "mutated":  # one field anywhere in the document replaced (or dropped)
        path = draw(st.sampled_from(_paths(doc)))
        parent = doc
        for key in path[:-1]:
            parent = parent[key]
        if draw(st.booleans()):
            parent[path[-1]] = draw(JSON)
        else:
            del parent[path[-1]]
        return json.dumps(doc).encode(), "application/json"
    content_type = draw(st.sampled_from([None, "text/plain", "application/octet-stream",
                                         "application/json; charset=utf-16", "multipart/form-data"]))
    return json.dumps(doc).encode(), content_type


@pytest.mark.parametrize("method, path, valid", ROUTES, ids=[r[1] for r in ROUTES])
def test_malformed_bodies_never_reach_a_server_error(cluster_url: str, method: str, path: str,
                                                     valid: dict[str, Any]) -> None:
    session = requests.Session()

    @settings(max_examples=200, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(body=bodies(valid))
    def send(body: tuple[bytes, str | None]) -> None:
        data, content_type = body
        headers = {"Content-Type": content_type} if content_type else {}
        answer = session.request(method, f"{cluster_url}{path}", data=data, headers=headers, timeout=10)
        assert answer.status_code < 500, (answer.status_code, answer.text[:300], data[:200])
        if answer.status_code >= 400:
            error = answer.json()["error"]
            assert set(error) == {"code", "message", "details"} and isinstance(error["details"], list)

    send()


def test_the_valid_documents_pass_validation(cluster_url: str) -> None:
    """So the mutated ones probe more than the outermost check."""
    for method, path, valid in ROUTES:
        answer = requests.request(method, f"{cluster_url}{path}", json=valid, timeout=10)
        assert answer.status_code < 400 or answer.status_code == 422, (path, answer.text[:300])


def test_a_body_over_one_mib_is_413_over_http(cluster_url: str) -> None:
    big = json.dumps({**REGISTER, "labels": ["x" * 1000] * 2000}).encode()
    answer = requests.post(f"{cluster_url}/api/node/register", data=big,
                           headers={"Content-Type": "application/json"}, timeout=10)
    assert answer.status_code == 413 and answer.json()["error"]["code"] == "PAYLOAD_TOO_LARGE"


# -- schemathesis over the cluster's OpenAPI document ----------------------------------------------

ROOT_TOKEN = "fuzz-root-token-0123456789abcdef"
JOIN_TOKEN = "fuzz-initial-join-token-0123456789"
EXAMPLES = 12  # per operation and mode: about 330 requests


@pytest.fixture(scope="module")
def secured_cluster_url() -> Iterator[str]:
    """A cluster with the credential checks of ``python -m cluster_orchestrator`` (the root's token,
    join tokens with a given initial one) and an online node, served by the production server."""
    with artifactless_root() as root_url:
        yield from _secured_cluster(root_url)


def _secured_cluster(root_url: str) -> Iterator[str]:
    config = ClusterConfig(name="fuzz", root_url=root_url, public_url="http://127.0.0.1:10100",
                           mqtt_host="127.0.0.1", mqtt_port=1883)
    store = InMemoryClusterStateStore()
    store.set_setting("cluster_id", "cid-fuzz")
    clock = FakeClock()
    core = ClusterOrchestrator(config, store, RootClient(config.root_url, timeout=0.2), _Bus(), clock)
    core.artifacts.put(MODEL_SHA, MODEL)
    node = core.register_node(REGISTER)["node_id"]
    core.on_telemetry(node, NodeTelemetry(node_id=node, ts=clock.now(), cpu_percent=5.0, cpu_count=4,
                                          memory_percent=40.0, memory_total_mb=8000, memory_available_mb=3000,
                                          memory_limit_mb=4096, profile="server"))
    tokens = JoinTokens(store, clock)
    tokens.ensure_initial(JOIN_TOKEN)
    app = create_app(core, access=ClusterAccess(root_token=ROOT_TOKEN, join_tokens=tokens))
    server = make_http_server(app, "127.0.0.1", 0, production=True)
    thread = server.serve_in_thread("fuzz-cluster-http")
    yield f"http://127.0.0.1:{server.port}"
    server.shutdown()
    thread.join(timeout=10)


def test_schemathesis_finds_no_server_error(secured_cluster_url: str) -> None:
    doc = requests.get(f"{secured_cluster_url}/api/openapi.json", timeout=10).json()
    root_ops = {(method.upper(), path) for path, ops in doc["paths"].items() for method, op in ops.items()
                if {"rootToken": []} in op["security"]}
    assert {("POST", "/api/plan"), ("POST", "/api/service/{service_id}/{instance}")} <= root_ops
    found = {}
    for token, skip in ((ROOT_TOKEN, lambda m, p: (m, p) not in root_ops),
                        (JOIN_TOKEN, lambda m, p: (m, p) in root_ops)):
        headers = {"Authorization": f"Bearer {token}"}
        found[token] = fuzz_root(secured_cluster_url, headers, EXAMPLES, skip=skip)
    samples = [s for run in found.values() for s in run["server_error_samples"]]
    assert sum(run["server_errors"] for run in found.values()) == 0, json.dumps(samples, indent=1)[:4000]
    operations = sum(run["fuzz_operations"] for run in found.values())
    assert operations == sum(len(ops) for ops in doc["paths"].values()) - 1  # all but the document itself
    assert sum(run["schemathesis_cases"] for run in found.values()) >= 5 * operations


def test_plan_of_a_model_the_root_lacks_is_not_a_server_error() -> None:
    """Found by the schemathesis run with more examples: a valid job whose model digest the cluster
    does not cache and the root answers 404 for (the fuzz runs above use such a root too)."""
    with artifactless_root() as root_url:
        config = ClusterConfig(name="fuzz", root_url=root_url, public_url="http://127.0.0.1:10100",
                               mqtt_host="127.0.0.1", mqtt_port=1883)
        store = InMemoryClusterStateStore()
        store.set_setting("cluster_id", "cid-fuzz")
        core = ClusterOrchestrator(config, store, RootClient(root_url, timeout=2), _Bus(), FakeClock())
        job = {**JOB, "model": {**JOB["model"], "sha256": "ab" * 32}}
        answer = create_app(core).test_client().post("/api/plan", json=job)
        assert answer.status_code == 400, answer.get_json()
        assert answer.get_json()["error"]["details"][0]["path"] == "model.sha256"
