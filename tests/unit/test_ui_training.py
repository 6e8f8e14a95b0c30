"""The training section of the web UI's deployment view (``root_orchestrator.ui_training``) and
its route ``GET /api/ui/service/<id>`` for an ``ml-training`` service, with the cluster's events
(placed, rounds, a lost client, the registered result) pushed as a cluster would push them."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from treeline_test_helpers import trainable_onnx

from root_orchestrator import ui_training
from root_orchestrator.stores import open_stores
from tests.unit.test_root_api import Root
from tests.unit.test_ui_api import UiClusters

EXPLANATION = {"server": "n-a", "clients": ["n-a", "n-b"], "unschedulable": "",
               "rejected": [{"node_id": "n-c", "reason": "no_train_extra", "message": "node c cannot train"},
                            {"node_id": "n-d", "reason": "battery", "message": "battery 12% below 30%"}]}
NAMES = {"n-a": "server-1", "n-b": "rpi4-1", "n-c": "rpi4-2"}


def round_event(ts: float, number: int, accuracy: float | None, loss: float | None, clients: int,
                **extra: Any) -> dict[str, Any]:
    return {"ts": ts, "kind": "training_round", "cause": "training", "message": f"round {number}",
            "round": number, "accuracy": accuracy, "loss": loss, "clients": clients, **extra}


EVENTS = [
    {"ts": 1.0, "kind": "training_placed", "cause": "training", "message": "server on n-a",
     "explanation": {"server": "n-x", "clients": [], "rejected": []}},  # an earlier placement: replaced
    {"ts": 2.0, "kind": "training_placed", "cause": "training", "message": "server on n-a",
     "explanation": EXPLANATION},
    round_event(3.0, 0, 0.08, None, 0),
    round_event(4.0, 1, 0.41, 1.92, 2),
    {"ts": 4.5, "kind": "training_client_lost", "cause": "training", "node_id": "n-b",
     "message": "client n-b failed"},
    round_event(5.0, 2, 0.55, 1.31, 2),  # resumed: round 2 reported again, the newest wins
    round_event(6.0, 2, 0.62, 1.20, 1, epsilon=3.25),
    {"ts": 6.0, "kind": "training_round", "cause": "training", "round": "x"},  # not a round number: skipped
    {"ts": 7.0, "kind": "training_registered", "cause": "training", "message": "registered",
     "model": "digits:7"},
]
PRIVACY = {"side": "server", "noise_multiplier": 0.5}
SERVICE = {"virtualization": "ml-training",
           "microservice": {"training": {"framework": "flower", "strategy": "fedprox", "rounds": 3,
                                         "data": "data:digits", "model": "digits:1", "min_clients": 2,
                                         "differential_privacy": PRIVACY}}}


def test_training_view_reads_placement_rounds_and_result_from_the_events() -> None:
    view = ui_training.training_view(SERVICE, EVENTS, NAMES)
    assert view is not None
    placement = view["placement"]
    assert placement["server"] == {"node_id": "n-a", "name": "server-1"}
    assert [c["name"] for c in placement["clients"]] == ["server-1", "rpi4-1"]
    assert [(r["name"], r["reason"]) for r in placement["rejected"]] == [
        ("rpi4-2", "no_train_extra"), ("n-d", "battery")]  # a node the fleet does not name: its id
    assert [(r["round"], r["accuracy"], r["loss"], r["clients"], r["epsilon"]) for r in view["rounds"]] == [
        (0, 0.08, None, 0, None), (1, 0.41, 1.92, 2, None), (2, 0.62, 1.20, 1, 3.25)]
    assert view["progress"] == {"round": 2, "of": 3}
    assert view["result"] == {"model": "digits:7", "name": "digits", "version": 7}
    assert view["clients_lost"] == [
        {"node_id": "n-b", "name": "rpi4-1", "message": "client n-b failed", "ts": 4.5}]
    assert view["spec"]["strategy"] == "fedprox" and view["spec"]["differential_privacy"]["side"] == "server"


def test_training_view_before_any_event_and_for_other_services() -> None:
    assert ui_training.training_view({"virtualization": "ml-model"}, EVENTS, NAMES) is None
    empty = ui_training.training_view(SERVICE, [], NAMES)
    assert empty is not None
    assert (empty["placement"], empty["rounds"], empty["result"]) == (None, [], None)
    assert empty["progress"] == {"round": 0, "of": 3}
    # an unschedulable job has no training_placed event: the instance's explanation says why
    failed = ui_training.training_view(SERVICE, [], NAMES, {"server": "", "clients": [], "rejected": [],
                                                            "unschedulable": "1 node(s) with data:digits"})
    assert failed is not None and failed["placement"]["server"] is None
    assert failed["placement"]["unschedulable"] == "1 node(s) with data:digits"
    # an inference explanation (scores, filtered) is not a training placement
    assert ui_training.placement_of({"scores": {}, "filtered": {}}, NAMES) is None


@pytest.mark.parametrize(("label", "expected"), [
    ("digits:12", {"model": "digits:12", "name": "digits", "version": 12}),
    ("ns:model:3", {"model": "ns:model:3", "name": "ns:model", "version": 3}),
    ("odd", {"model": "odd", "name": "odd", "version": None}),
])
def test_result_label_parsing(label: str, expected: dict[str, Any]) -> None:
    assert ui_training.result_of([{"kind": "training_registered", "model": label}]) == expected


@pytest.fixture
def root(mongo_url: str) -> Iterator[Root]:
    stores = open_stores(mongo_url)
    yield Root(stores, clusters=UiClusters())
    stores.close()


def training_sla(model: str) -> dict[str, Any]:
    return {"sla_version": "v2.0", "customerID": "Admin", "applications": [{
        "applicationID": "", "application_name": "fl", "application_namespace": "demo",
        "application_desc": "federated", "microservices": [{
            "microserviceID": "", "microservice_name": "fl", "microservice_namespace": "demo",
            "virtualization": "ml-training", "memory": 128,
            "training": {"framework": "flower", "rounds": 3, "data": "data:digits", "model": model},
            "constraints": [], "connectivity": []}]}]}


def test_the_service_route_has_a_training_section_for_a_training_service(root: Root) -> None:
    clusters: Any = root.clusters
    clusters.node_answers = {"http://a:1": [{"node_id": "n-a", "name": "server-1", "online": True},
                                            {"node_id": "n-b", "name": "rpi4-1", "online": True}]}
    version = root.register_model("tiny", trainable_onnx())
    cid = root.register_cluster("a", "http://a:1", active_nodes=2)
    sid = root.submit(training_sla(f"tiny:{version['version']}"))
    started = root.http.post(f"/api/service/{sid}/instance")
    assert started.status_code in (200, 201), started.get_json()
    push = {"aggregate": {"active_nodes": 2},
            "jobs": [{"service_id": sid, "instance": 0, "status": "RUNNING", "explanation": EXPLANATION,
                      "events": EVENTS}]}
    assert root.http.post(f"/api/information/{cid}", json=push).status_code == 200
    body = root.http.get(f"/api/ui/service/{sid}").get_json()
    training = body["training"]
    assert training["placement"]["server"] == {"node_id": "n-a", "name": "server-1"}  # named from the fleet
    assert [r["round"] for r in training["rounds"]] == [0, 1, 2]
    assert training["result"]["name"] == "digits" and training["progress"]["of"] == 3
    assert body["strip"]["stages"] == []  # nothing of an inference placement to draw


def test_the_deployments_list_names_a_training_services_starting_model() -> None:
    from root_orchestrator.ui_views import service_row

    resolved = {"name": "digits_mlp", "version": 1, "sha256": "0" * 64}
    training = {"service_id": "s1", "virtualization": "ml-training", "model": {"resolved": resolved}}
    assert service_row(training, {})["model"] == "trains from digits_mlp v1"  # was "? v1"
    serving = {"service_id": "s2", "virtualization": "ml-model",
               "model": {"name": "digits_mlp", "version": "latest", "resolved": {**resolved, "version": 2}}}
    assert service_row(serving, {})["model"] == "digits_mlp v2"
