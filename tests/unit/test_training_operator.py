"""The operator's side of a training SLA at the root: refused before anything is written, planned.

A training SLA whose starting model (``training.model``) does not resolve is refused by every
route that takes an SLA (``POST /api/application/``, ``/api/apply``, ``/api/plan``) with 404
naming ``applications[i].microservices[j].training.model``, and nothing is stored; the instance
route names ``training.model``. ``POST /api/plan`` of a training SLA asks the first cluster of
the coarse order for its training placement and answers it (``training``: server, clients,
rejected nodes), or why it cannot be scheduled, naming the field.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import pytest
from test_root_api import Root, _error
from treeline_test_helpers import trainable_onnx

from root_orchestrator.stores import open_stores
from treeline_common.errors import Unavailable
from treeline_common.jobs import JobRequest

PATH = "applications[0].microservices[0].training.model"


@pytest.fixture
def root(mongo_url: str) -> Iterator[Root]:
    stores = open_stores(mongo_url)
    yield Root(stores)
    stores.close()


def register_trainable(root: Root, name: str = "tiny") -> dict[str, Any]:
    """A version the Flower client can train, registered as ``name`` (``tiny:1`` first)."""
    return root.register_model(name, trainable_onnx())


def training_sla(model: str, data: str = "data:digits", min_clients: int = 2) -> dict[str, Any]:
    return {"sla_version": "v2.0", "customerID": "Admin", "applications": [{
        "applicationID": "", "application_name": "fl", "application_namespace": "demo",
        "application_desc": "federated", "microservices": [{
            "microserviceID": "", "microservice_name": "fl", "microservice_namespace": "demo",
            "virtualization": "ml-training", "memory": 128,
            "training": {"framework": "flower", "strategy": "fedavg", "rounds": 3, "min_clients": min_clients,
                         "data": data, "model": model},
            "constraints": [], "connectivity": []}]}]}


@pytest.mark.parametrize(("route", "model", "why"), [
    ("/api/apply", "ghost:1", "no model 'ghost'"),
    ("/api/application/", "ghost:1", "no model 'ghost'"),
    ("/api/plan", "ghost:1", "no model 'ghost'"),
    ("/api/apply", "tiny:7", "7"),          # the model exists, that version does not
    ("/api/apply", "tiny:prod", "prod"),    # nor that alias
])
def test_a_missing_starting_model_is_refused_at_its_field_and_nothing_is_stored(
        root: Root, route: str, model: str, why: str) -> None:
    register_trainable(root)
    root.register_cluster("c1", "http://c1:1")
    err = _error(root.http.post(route, json=training_sla(model)), 404, "NOT_FOUND")
    assert [d["path"] for d in err["details"]] == [PATH], err
    assert why in err["details"][0]["message"] and model in err["details"][0]["message"], err
    assert err["message"].startswith(PATH), err
    assert root.http.get("/api/applications/").get_json() == []
    assert root.http.get("/api/services/").get_json() == []
    assert root.clusters.deployed == [] and root.clusters.planned == []


def test_another_users_model_is_missing_too(root: Root) -> None:
    register_trainable(root)  # the admin's
    bob = root.login_as(root.add_user("bob"))
    err = _error(bob.post("/api/apply", json=training_sla("tiny:1")), 404, "NOT_FOUND")
    assert err["details"][0]["path"] == PATH and "tiny" in err["details"][0]["message"]
    assert root.http.get("/api/applications/").get_json() == []


def test_the_instance_route_names_training_model_and_reserves_nothing(root: Root) -> None:
    root.register_cluster("c1", "http://c1:1")
    version = register_trainable(root)
    sid = root.submit(training_sla(f"tiny:{version['version']}"))
    root.stores.models.delete_model("tiny")  # gone between submit and deploy
    err = _error(root.http.post(f"/api/service/{sid}/instance"), 404, "NOT_FOUND")
    assert err["details"][0]["path"] == "training.model", err
    assert root.http.get(f"/api/service/{sid}").get_json()["instances"] == []
    assert root.clusters.deployed == []


def _placement(unschedulable: str = "", field: str = "") -> dict[str, Any]:
    return {"schedulable": not unschedulable, "strategy": "federated fedavg", "message": unschedulable,
            "predicted": {}, "stages": [],
            "reasons": {"n3": "battery: battery 10% below the SLA's minimum 30%"},
            "training": {"server": "id1", "server_name": "n1", "clients": ["id1", "id2"],
                         "client_names": ["n1", "n2"], "unschedulable": unschedulable, "field": field,
                         "rounds": 3, "min_clients": 2, "data": "data:digits",
                         "rejected": [{"node_id": "id3", "node_name": "n3", "reason": "battery",
                                       "message": "battery 10% below the SLA's minimum 30%"}]}}


def test_plan_of_a_training_sla_answers_the_first_clusters_training_placement(root: Root) -> None:
    version = register_trainable(root)
    root.register_cluster("a", "http://a:1", active_nodes=5)
    root.register_cluster("b", "http://b:1", active_nodes=1)
    root.clusters.fail["http://a:1"] = Unavailable("connection refused")  # skipped for the next one
    root.clusters.plans["http://b:1"] = _placement()
    [row] = root.http.post("/api/plan", json=training_sla("tiny:1")).get_json()["services"]
    assert (row["cluster_name"], row["schedulable"]) == ("b", True)
    assert row["training"]["server_name"] == "n1" and row["training"]["client_names"] == ["n1", "n2"]
    assert row["training"]["rejected"][0]["reason"] == "battery"
    assert row["model"]["version"] == version["version"]
    [(url, job)] = root.clusters.planned
    request = JobRequest.from_dict(job)
    assert url == "http://b:1" and request.training is not None and request.training.rounds == 3
    assert root.http.get("/api/applications/").get_json() == []  # a plan stores nothing


def test_plan_of_an_unschedulable_training_sla_names_the_field(root: Root) -> None:
    register_trainable(root)
    root.register_cluster("a", "http://a:1")
    why = "training.data: no node carries label data:digitz; labels seen: data:digits"
    root.clusters.plans["http://a:1"] = _placement(why, "training.data")
    sla = training_sla("tiny:1", data="data:digitz")
    [row] = root.http.post("/api/plan", json=sla).get_json()["services"]
    assert row["schedulable"] is False and row["message"] == why
    assert row["training"]["field"] == "training.data"
    garbled = copy.deepcopy(_placement())
    garbled["training"] = "not an object"  # an untrusted answer: kept out
    root.clusters.plans["http://a:1"] = garbled
    [row] = root.http.post("/api/plan", json=training_sla("tiny:1")).get_json()["services"]
    assert "training" not in row


@pytest.mark.parametrize(("model", "message"), [
    ("tiny:0", 'version must be >= 1, got "tiny:0"'),
    ("", "must be a registry model as name or name:version"),
])
def test_a_malformed_starting_model_is_400_at_its_field_on_every_route(root: Root, model: str,
                                                                       message: str) -> None:
    register_trainable(root)
    for route in ("/api/apply", "/api/application/", "/api/plan"):
        err = _error(root.http.post(route, json=training_sla(model)), 400, "INVALID_INPUT")
        assert [d["path"] for d in err["details"]] == [PATH] and message in err["details"][0]["message"], err
    assert root.http.get("/api/applications/").get_json() == []
