"""Root REST: op-time profiles per model version and device class, on both store backends."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

import pytest
from flask.testing import FlaskClient
from test_root_api import Root

from model_zoo.tiny import tiny_dag_bytes
from root_orchestrator.cluster_client import ClusterClient
from root_orchestrator.stores import open_stores

BASE = "/api/models/tiny/versions"


class NoClusters(ClusterClient):
    def deploy(self, cluster_url: str, service_id: str, instance: int, job: dict[str, Any]) -> None:
        raise AssertionError("not used")

    def undeploy(self, cluster_url: str, service_id: str, instance: int) -> None:
        raise AssertionError("not used")

    def plan(self, cluster_url: str, job: dict[str, Any]) -> dict[str, Any]:
        raise AssertionError("not used")

    def profile(self, cluster_url: str, request: dict[str, Any]) -> dict[str, Any]:
        raise AssertionError("not used")


@pytest.fixture
def http(mongo_url: str) -> Iterator[FlaskClient]:
    stores = open_stores(mongo_url)
    client = Root(stores, clusters=NoClusters()).http
    for seed in (0, 1):
        r = client.post(f"{BASE}", data=tiny_dag_bytes(seed), content_type="application/octet-stream")
        assert r.status_code == 201, r.get_json()
    yield client
    stores.close()


def _body(**extra: Any) -> dict[str, Any]:
    return {"node_id": "n1", "request_id": "r1", "sha256": "", "device_class": "server",
            "op_ms": {"conv0": 0.5, "model.fc/Gemm$1": 0.25}, "total_ms": 0.9, "runs": 20, "error": "",
            "ts": 12.5, **extra}


def test_put_get_and_list_profiles(http: FlaskClient) -> None:
    assert http.get(f"{BASE}/1/profiles").get_json() == {"profiles": {}}
    assert http.get(f"{BASE}/1/profiles/server").status_code == 404
    r = http.put(f"{BASE}/1/profiles/server", json=_body())
    assert r.status_code == 200, r.get_json()
    stored = r.get_json()
    sha = hashlib.sha256(tiny_dag_bytes(0)).hexdigest()
    assert stored["op_ms"] == {"conv0": 0.5, "model.fc/Gemm$1": 0.25} and stored["sha256"] == sha
    assert stored["device_class"] == "server" and stored["runs"] == 20 and stored["total_ms"] == 0.9
    assert http.get(f"{BASE}/1/profiles/server").get_json() == stored
    http.put(f"{BASE}/latest/profiles/rpi4", json=_body(device_class="ignored", op_ms={"fc": 2.0}))
    # last write wins
    http.put(f"{BASE}/1/profiles/server", json=_body(op_ms={"conv0": 0.75}))
    listed = http.get(f"{BASE}/1/profiles").get_json()["profiles"]
    assert set(listed) == {"server"} and listed["server"]["op_ms"] == {"conv0": 0.75}
    other = http.get(f"{BASE}/2/profiles").get_json()["profiles"]
    assert set(other) == {"rpi4"} and other["rpi4"]["device_class"] == "rpi4"


def test_invalid_profiles_are_400_with_paths(http: FlaskClient) -> None:
    r = http.put(f"{BASE}/1/profiles/server", json=_body(op_ms={"a": -1, "b": "x", "c": True, "d": 1.0},
                                                          runs=-2, total_ms="slow"))
    assert r.status_code == 400
    error = r.get_json()["error"]
    assert error["code"] == "INVALID_INPUT"
    assert {d["path"] for d in error["details"]} == {"op_ms.a", "op_ms.b", "op_ms.c", "runs", "total_ms"}
    r = http.put(f"{BASE}/1/profiles/server", json=_body(op_ms=[1, 2]))
    assert r.status_code == 400 and r.get_json()["error"]["details"][0]["path"] == "op_ms"
    r = http.put(f"{BASE}/1/profiles/server", json=_body(sha256="a" * 64))
    assert r.status_code == 400 and r.get_json()["error"]["details"][0]["path"] == "sha256"
    not_json = http.put(f"{BASE}/1/profiles/server", data="nope", content_type="application/json")
    assert not_json.status_code == 400
    assert http.put(f"{BASE}/1/profiles/bad%20class", json=_body()).status_code == 400
    assert http.get(f"{BASE}/1/profiles").get_json() == {"profiles": {}}


def test_unknown_model_or_version_is_404(http: FlaskClient) -> None:
    for url in ("/api/models/nope/versions/1/profiles/server", f"{BASE}/9/profiles/server"):
        r = http.put(url, json=_body())
        assert r.status_code == 404 and r.get_json()["error"]["code"] == "NOT_FOUND"
        assert http.get(url).status_code == 404
        assert http.get(url.rsplit("/", 1)[0]).status_code == 404
