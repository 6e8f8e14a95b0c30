"""The root's side of a training service: the forwarded job and the result route.

An ``ml-training`` service is deployed like an ``ml-model`` one: the root resolves the starting
version, forwards a job whose ``training`` block is the typed spec (no dry-run choice), and a
cluster posts the result to ``POST /api/training/<service_id>/<instance>/result``: bad bodies
are 400 naming the field, a good one is a new version with the lineage, owned like the service.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

import pytest
from test_root_api import Root, _error

from node_engine.training import model as mlp
from root_orchestrator.stores import open_stores
from treeline_common.jobs import JobRequest

pytest.importorskip("torch")


@pytest.fixture
def root(mongo_url: str) -> Iterator[Root]:
    stores = open_stores(mongo_url)
    yield Root(stores)
    stores.close()


def training_sla(model: str, rounds: int = 2) -> dict[str, Any]:
    return {"sla_version": "v2.0", "customerID": "Admin", "applications": [{
        "applicationID": "", "application_name": "fl", "application_namespace": "demo",
        "application_desc": "federated", "microservices": [{
            "microserviceID": "", "microservice_name": "fl", "microservice_namespace": "demo",
            "virtualization": "ml-training", "memory": 128,
            "training": {"framework": "flower", "strategy": "fedprox", "parameters": {"proximal_mu": 0.05},
                         "rounds": rounds, "data": "data:digits", "model": model},
            "constraints": [], "connectivity": []}]}]}


def lineage(parent: int) -> dict[str, Any]:
    return {"parent": {"name": "digits", "version": parent}, "operation": "federated-training",
            "dataset": "data:digits",
            "parameters": {"strategy": "fedprox", "rounds": 2, "clients": ["a", "b"],
                           "accuracy_per_round": [0.1, 0.5, 0.7]}}


def test_a_training_service_is_forwarded_with_its_spec_and_its_result_registered(root: Root) -> None:
    onnx = mlp.to_onnx(mlp.new_model(0))
    parent = root.register_model("digits", onnx)
    root.register_cluster("c1", "http://c1.test", cpu_percent=10, cpu_cores=4, memory_mb=4096)
    service_id = root.submit(training_sla(f"digits:{parent['version']}"))
    r = root.http.post(f"/api/service/{service_id}/instance")
    assert r.status_code in (200, 201), r.get_json()
    [(url, _, number, job)] = root.clusters.deployed
    assert url == "http://c1.test" and not root.clusters.planned  # no dry run for a training job
    request = JobRequest.from_dict(job)
    assert request.training is not None and request.training.strategy == "fedprox"
    assert (request.model.name, request.model.version) == ("digits", parent["version"])

    cluster = root.cluster_client()
    trained = mlp.to_onnx(mlp.new_model(1))
    sha = hashlib.sha256(trained).hexdigest()
    path = f"/api/training/{service_id}/{number}/result"
    good = {"name": "digits", "sha256": sha, "lineage": lineage(parent["version"]),
            "bytes_per_client_round": {"a": [10152, 10152]}}
    assert _error(cluster.post(path, json={**good, "lineage": "x"}), 400, "INVALID_INPUT")["details"][0][
        "path"] == "lineage"
    assert _error(cluster.post(path, json={**good, "sha256": "zz"}), 400, "INVALID_INPUT")["details"][0][
        "path"] == "sha256"
    _error(cluster.post(f"/api/training/{service_id}/9/result", json=good), 404, "NOT_FOUND")
    _error(cluster.post(path, json=good), 404, "NOT_FOUND")  # the artifact is not stored yet
    put = cluster.put(f"/api/artifacts/{sha}", data=trained, content_type="application/octet-stream")
    assert put.status_code == 201, put.get_json()
    bad_parent = {**good["lineage"], "parent": {"name": "digits", "version": "x"}}
    assert _error(cluster.post(path, json={**good, "lineage": bad_parent}), 400, "INVALID_INPUT")["details"]
    r = cluster.post(path, json=good)
    assert r.status_code == 201, r.get_json()
    doc = r.get_json()
    assert doc["version"] == parent["version"] + 1 and doc["sha256"] == sha
    assert doc["lineage"]["parent"] == {"name": "digits", "version": parent["version"]}
    assert doc["metrics"]["quality"]["accuracy"] == 0.7
    assert doc["metrics"]["training"]["bytes_per_client_round"] == 10152
    again = cluster.post(path, json=good)  # a retried post: the same version, no new one
    assert again.status_code == 200 and again.get_json()["version"] == doc["version"]


def test_a_training_block_the_root_cannot_use_is_refused_naming_the_field(root: Root) -> None:
    # refused at submit, before anything is stored (tests/unit/test_training_operator.py has the rest)
    error = _error(root.http.post("/api/application/", json=training_sla("nosuch:1")), 404, "NOT_FOUND")
    assert "nosuch" in error["message"], error
    assert error["details"][0]["path"] == "applications[0].microservices[0].training.model", error
