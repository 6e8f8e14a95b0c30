"""The root as a real process under malformed input: no request reaches a 500.

- Schemathesis over the root's own OpenAPI document (``GET /api/openapi.json``): a few positive
  and negative cases per operation (about 10 s in all), sent with Admin's token when the root has
  ``POST /api/auth/login`` (development mode), else without one.
- A 200 MB model upload raises the root's RSS by at most 50 MB (streamed to disk).
- Limits over real HTTP: 413 with the error body (not a reset connection) for a model over a
  lowered ``TREELINE_MAX_MODEL_MB``, with and without Content-Length, and for a 5 MiB SLA.
- Broken HTTP framing (a bad or lying Content-Length) gets a 4xx, never a 5xx.
- Valid documents (SLAs, a cluster push, a profile, a registration, an alias) with one to three
  fields anywhere replaced by random JSON or dropped: never a 5xx. Two bugs found this way are
  pinned by strict xfail tests (``test_known_bug_*``) and kept out of the generator until fixed.
"""

from __future__ import annotations

import copy
import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from benchmarks.hardening import (
    RootProcess,
    file_chunks,
    fuzz_root,
    root_process,
    upload_peak_rss,
    write_big_onnx,
)
from deployment_descriptors import example_path
from model_zoo.tiny import INPUT_SHAPE as TINY_INPUT_SHAPE
from model_zoo.tiny import tiny_dag_bytes

pytestmark = pytest.mark.integration

EXAMPLES = 6  # per operation and mode: about 600 requests (each a real HTTP call to a root on the embedded MongoDB)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RootProcess]:
    with root_process(tmp_path_factory.mktemp("fuzz") / "root", env={"TREELINE_MAX_MODEL_MB": "300"}) as proc:
        yield proc


def error_of(response: requests.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, (response.status_code, response.text[:300])
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "details"}
    assert body["error"]["code"] == code
    return dict(body["error"])


def test_schemathesis_finds_no_server_error(root: RootProcess) -> None:
    found = fuzz_root(root.url, root.headers(), EXAMPLES)
    assert found["server_errors"] == 0, json.dumps(found["server_error_samples"], indent=1)[:4000]
    assert found["fuzz_operations"] >= 30 and found["schemathesis_cases"] >= 5 * found["fuzz_operations"]


def test_a_200_mb_upload_is_streamed(root: RootProcess, tmp_path: Path) -> None:
    measured = upload_peak_rss(root, 200, tmp_path)
    assert measured["upload_status"] == 201, measured
    assert measured["upload_peak_rss_mb"] <= 50, measured


def test_limits_answer_413_with_the_error_body_over_http(tmp_path: Path) -> None:
    model = tmp_path / "m.onnx"
    write_big_onnx(model, 3 << 20)
    with root_process(tmp_path / "root", env={"TREELINE_MAX_MODEL_MB": "1"}) as small:
        headers = {**small.headers(), "Content-Type": "application/octet-stream"}
        with model.open("rb") as fh:  # Content-Length: refused before the body is read
            err = error_of(requests.post(f"{small.url}/api/models/m/versions", data=fh, headers=headers,
                                         timeout=30), 413, "PAYLOAD_TOO_LARGE")
        assert "1 MiB" in err["message"]
        chunked = requests.post(f"{small.url}/api/models/m/versions", data=file_chunks(model, 1 << 16),
                                headers=headers, timeout=30)
        error_of(chunked, 413, "PAYLOAD_TOO_LARGE")
        sla = {"sla_version": "v2.0", "customerID": "Admin", "applications": [{
            "applicationID": "", "application_name": "a", "application_namespace": "n",
            "application_desc": "x" * (5 << 20), "microservices": []}]}
        err = error_of(requests.post(f"{small.url}/api/apply", json=sla, headers=small.headers(), timeout=30),
                       413, "PAYLOAD_TOO_LARGE")
        assert err["details"][0]["limit_bytes"] == 1 << 20
        text = requests.post(f"{small.url}/api/apply", data=json.dumps(sla)[:1000], timeout=30,
                             headers={**small.headers(), "Content-Type": "text/plain"})
        error_of(text, 415, "UNSUPPORTED_MEDIA_TYPE")
        models = requests.get(f"{small.url}/api/models/", headers=small.headers(), timeout=30).json()
        assert (models if isinstance(models, list) else models["models"]) == []


def _raw(url: str, request: bytes, send_after: bytes = b"") -> bytes:
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(request)
        if send_after:
            sock.sendall(send_after)
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while piece := sock.recv(65536):
            chunks.append(piece)
    return b"".join(chunks)


@pytest.mark.parametrize("framing", [
    b"Content-Length: abc\r\n\r\n{}",
    b"Content-Length: -5\r\n\r\n{}",
    b"Content-Length: 100\r\n\r\n{\"a\": 1}",  # the body ends early (client closes)
    b"Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",  # a bad chunk size
    b"Content-Length: 99999999999999999999\r\n\r\n{}",
])
def test_broken_framing_is_never_a_server_error(root: RootProcess, framing: bytes) -> None:
    token = root.headers().get("Authorization", "")
    head = (b"POST /api/apply HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + (f"Authorization: {token}\r\n".encode() if token else b"") + framing)
    answer = _raw(root.url, head)
    status = int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/") else None
    assert status is None or status < 500, answer[:300]
    assert requests.get(f"{root.url}/api/health", timeout=10).status_code == 200


# -- mutated documents --------------------------------------------------------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=10)


def _paths(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found: list[tuple[Any, ...]] = []
    items = doc.items() if isinstance(doc, dict) else enumerate(doc) if isinstance(doc, list) else ()
    for key, value in items:
        found.append((*prefix, key))
        found.extend(_paths(value, (*prefix, key)))
    return found


def _known_bug(doc: Any) -> bool:
    """Shapes of bugs found and not fixed yet (none now: the namespace and event-field bugs that
    test_known_bug_* pin are fixed); kept so a new one can be pinned the same way."""
    return False


@st.composite
def mutated(draw: st.DrawFn, valid: Any) -> Any:
    doc = copy.deepcopy(valid)
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        paths = _paths(doc)
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent = doc
        for key in path[:-1]:
            parent = parent[key]
        if draw(st.booleans()) or not isinstance(parent, dict):
            parent[path[-1]] = draw(JSON)
        else:
            del parent[path[-1]]
    return doc


def _service_and_push(root: RootProcess, http: requests.Session, name: str) -> tuple[Any, Any]:
    """A new application ``name`` with one instance, and a valid cluster push about it."""
    sla = json.loads(example_path("mobilenet_v2_single").read_text())
    sla["applications"][0]["application_name"] = name
    sla["applications"][0]["microservices"][0]["model"]["name"] = "tiny"
    # the declared input must be tiny's: the root checks it against the registered signature
    sla["applications"][0]["microservices"][0]["model"]["input"]["shape"] = list(TINY_INPUT_SHAPE)
    created = http.post(f"{root.url}/api/application/", json=sla, timeout=30).json()
    app = created[0] if isinstance(created, list) else created["applications"][0]
    sid = app["microservices"][0]
    # the instance record exists even though its cluster cannot be reached (503): pushes about it apply
    assert http.post(f"{root.url}/api/service/{sid}/instance", timeout=30).status_code in (202, 503)
    stage = {"index": 0, "node_id": "n1", "node_name": "s1", "profile": "server", "endpoint": "tcp://127.0.0.1:5",
             "stage_key": f"{sid}-0/1/0", "inputs": ["input"], "outputs": ["output"], "flops": 10,
             "param_bytes": 10, "cut_bytes": 0, "sha256": "0" * 64, "state": "READY"}
    placement = {"v": 1, "deployment_id": f"{sid}-0", "generation": 1, "strategy": "flops-balanced",
                 "input": {"name": "input", "shape": [1, 3, 224, 224], "dtype": "float32"},
                 "outputs": ["output"], "entry": {"node_id": "n1", "endpoint": "tcp://127.0.0.1:5",
                                                  "stage_key": f"{sid}-0/1/0"}, "stages": [stage]}
    push = {"v": 1, "aggregate": {"active_nodes": 1}, "jobs": [{
        "service_id": sid, "instance": 0, "status": "RUNNING", "status_detail": "ok", "placement": placement,
        "explanation": {"why": "fuzz"}, "generation": 1,
        "events": [{"ts": 1.0, "kind": "replan", "cause": "fuzz", "instance": 0}]}]}
    return sla, push


@pytest.fixture(scope="module")
def world(root: RootProcess) -> dict[str, Any]:
    """A model, a cluster and a service, so pushes and profiles reach their deep checks."""
    http = requests.Session()
    http.headers.update(root.headers())
    assert http.post(f"{root.url}/api/models/tiny/versions", data=tiny_dag_bytes(0), timeout=30).ok
    cluster = http.post(f"{root.url}/api/clusters/register", timeout=30,
                        json={"cluster_name": "fuzz", "cluster_location": "lab", "url": "http://127.0.0.1:9"})
    cluster_id = cluster.json()["cluster_id"]
    sla, push = _service_and_push(root, http, "fuzzed")
    profile = {"v": 1, "device_class": "server", "op_ms": {"Relu_0": 1.0}, "node_name": "s1"}
    return {"http": http, "targets": [
        ("POST", "/api/apply", sla), ("POST", "/api/plan", sla), ("POST", "/api/application/", sla),
        ("POST", f"/api/information/{cluster_id}", push),
        ("PUT", "/api/models/tiny/versions/1/profiles/server", profile),
        ("POST", "/api/clusters/register", {"cluster_name": "fuzz2", "cluster_location": "lab",
                                            "url": "http://127.0.0.1:9"}),
        ("PUT", "/api/models/tiny/aliases/prod", {"version": 1})]}


TARGETS = ["apply", "plan", "application", "push", "profile", "register", "alias"]


@pytest.mark.parametrize("index", range(len(TARGETS)), ids=TARGETS)
def test_mutated_documents_never_reach_a_server_error(root: RootProcess, world: dict[str, Any],
                                                      index: int) -> None:
    method, path, valid = world["targets"][index]
    http: requests.Session = world["http"]
    valid_answer = http.request(method, f"{root.url}{path}", json=valid, timeout=30)
    assert valid_answer.status_code in (200, 201, 202, 409, 503), valid_answer.text[:300]

    @settings(max_examples=120, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(doc=mutated(valid))
    def send(doc: Any) -> None:
        if _known_bug(doc):
            return
        answer = http.request(method, f"{root.url}{path}", json=doc, timeout=30)
        # 503: the fuzzed cluster URL does not answer (a dependency, not a fault of the input)
        assert answer.status_code < 500 or answer.status_code == 503, (answer.text[:300],
                                                                        json.dumps(doc)[:500])
        if answer.status_code >= 400:
            assert set(answer.json()["error"]) == {"code", "message", "details"}

    send()


def test_sla_namespace_that_is_a_list_is_a_400(root: RootProcess) -> None:
    sla = json.loads(example_path("mobilenet_v2_single").read_text())
    sla["applications"][0]["microservices"][0]["microservice_namespace"] = ["x"]
    answer = requests.post(f"{root.url}/api/plan", json=sla, headers=root.headers(), timeout=30)
    assert answer.status_code == 400, answer.text[:300]


def test_push_event_cause_that_is_a_list_is_a_400(root: RootProcess, world: dict[str, Any]) -> None:
    method, path, _push = world["targets"][3]
    _sla, bad = _service_and_push(root, world["http"], "known-bug-cause")
    bad["jobs"][0]["events"] = [{"ts": 2.0, "kind": "replan", "cause": ["x"], "instance": 0}]
    answer = world["http"].request(method, f"{root.url}{path}", json=bad, timeout=30)
    assert answer.status_code == 400, answer.text[:300]
    assert answer.json()["error"]["details"][0]["path"] == "jobs[0]"
