"""Nodes advertise whether they can train (``treeline:train``), and training placement filters on it.

The contract is :mod:`treeline_common.capabilities`: the registration body's labels end with the
node engine's capability labels; the cluster keeps them in the node document; the snapshot's
``NodeView.capabilities`` reads them; :func:`~cluster_orchestrator.training.place_training`
rejects a node that advertised capabilities without ``train`` (``no_train_extra``) and keeps
one that did not advertise (unknown).
"""

from __future__ import annotations

from typing import Any

import pytest
from treeline_test_helpers import node_view

from cluster_orchestrator.nodes import validate_registration
from cluster_orchestrator.planning import build_snapshot
from cluster_orchestrator.training import REASON_NO_DATA, REASON_NO_TRAIN_EXTRA, place_training
from ml_scheduler.plugins.filters import REASON_OFFLINE
from ml_scheduler.snapshot import ClusterSnapshot
from node_engine.simulator.virtual_node import VirtualNode
from node_engine.telemetry import registration_body
from node_engine.training import missing_extra
from treeline_common.capabilities import TRAIN_LABEL, capabilities_of, capability_labels
from treeline_common.profiles import get_profile
from treeline_common.training import TrainingSpec

SPEC = TrainingSpec.from_sla({"framework": "flower", "rounds": 1, "data": "data:digits", "model": "m:1",
                              "min_clients": 1})
DATA = "data:digits"


@pytest.mark.parametrize(("can_train", "expected"), [
    (True, ["rpi", "data:digits", "treeline:infer", "treeline:train"]),
    (False, ["rpi", "data:digits", "treeline:infer"]),
])
def test_registration_labels_say_whether_the_node_can_train(can_train: bool, expected: list[str]) -> None:
    body = registration_body("n", get_profile("rpi4"), "tcp://127.0.0.1:1", (DATA,), can_train=can_train)
    assert body["labels"] == expected
    # the cluster's validator keeps them: they reach the node document unchanged
    assert validate_registration(body)["labels"] == expected


def test_registration_detects_the_train_extra_by_default() -> None:
    body = registration_body("n", get_profile("server"), "tcp://127.0.0.1:1")
    assert (TRAIN_LABEL in body["labels"]) is (missing_extra() == "")


def test_simulated_nodes_do_not_advertise_capabilities() -> None:
    body = VirtualNode("sim-1", get_profile("rpi4"), 0, first_seq=1).registration_body("tcp://192.0.2.1:1")
    assert capabilities_of(body["labels"]) is None  # unknown: a simulated node never runs Flower anyway


@pytest.mark.parametrize(("labels", "expected"), [
    ([], None),
    (["rpi", "data:digits"], None),
    (["treeline:infer"], ("infer",)),
    (["treeline:train", "x", "treeline:infer", "treeline:train"], ("infer", "train")),
    (["treeline:"], None),  # an empty capability name is not one
])
def test_capabilities_of_labels(labels: list[str], expected: tuple[str, ...] | None) -> None:
    assert capabilities_of(labels) == expected


def _doc(node_id: str, labels: list[str], online: bool = True) -> dict[str, Any]:
    return {"node_id": node_id, "name": node_id, "online": online, "labels": labels}


def test_snapshot_carries_the_capabilities_and_placement_filters_nodes_that_cannot_train() -> None:
    trains = [DATA, *capability_labels(True)]
    infers = [DATA, *capability_labels(False)]
    snapshot = build_snapshot([
        _doc("a", trains), _doc("b", infers), _doc("c", [DATA]),  # c: did not advertise (unknown)
        _doc("d", capability_labels(False)), _doc("e", infers, online=False),
        _doc("f", capability_labels(True)),
    ])
    assert snapshot.by_id("a").capabilities == ("infer", "train")
    assert snapshot.by_id("b").capabilities == ("infer",)
    assert snapshot.by_id("c").capabilities is None
    placement = place_training(snapshot, SPEC)
    assert placement.clients == ("a", "c")
    reasons = {node: reason for node, (reason, _) in placement.rejected.items()}
    assert reasons == {"b": REASON_NO_TRAIN_EXTRA, "d": REASON_NO_TRAIN_EXTRA, "e": REASON_OFFLINE,
                       "f": REASON_NO_DATA}  # f could aggregate; the tie goes to the lowest id, a
    assert placement.server == "a"
    assert "pip install 'treeline[train]'" in placement.rejected["b"][1]
    explained = {r["node_id"]: r for r in placement.explanation()["rejected"]}
    assert explained["b"]["reason"] == REASON_NO_TRAIN_EXTRA and "cannot train" in explained["b"]["message"]


def test_a_fast_node_without_the_extra_is_never_the_server() -> None:
    snapshot = ClusterSnapshot(nodes=(
        node_view("fast", speed_factor=9.0, capabilities=("infer",)),
        node_view("slow", speed_factor=0.5, labels=(DATA,), capabilities=("infer", "train")),
    ))
    placement = place_training(snapshot, SPEC)
    assert (placement.server, placement.clients) == ("slow", ("slow",))
    assert placement.rejected == {"fast": (REASON_NO_TRAIN_EXTRA, placement.rejected["fast"][1])}
    assert REASON_NO_DATA not in {r for r, _ in placement.rejected.values()}


def test_only_nodes_without_the_extra_hold_the_data_is_unschedulable_with_reasons() -> None:
    snapshot = ClusterSnapshot(nodes=(node_view("a", labels=(DATA,), capabilities=("infer",)),
                                      node_view("b", labels=(DATA,), capabilities=("infer",))))
    placement = place_training(snapshot, SPEC)
    assert placement.unschedulable == "no node passes the filters"
    assert {r for r, _ in placement.rejected.values()} == {REASON_NO_TRAIN_EXTRA}


def test_a_node_holding_the_held_out_split_advertises_it_and_is_preferred_as_the_server() -> None:
    profile = get_profile("rpi4")
    body = registration_body("n", profile, "tcp://127.0.0.1:1", can_train=True, can_evaluate=True)
    assert body["labels"][-3:] == ["treeline:infer", "treeline:train", "treeline:eval"]
    assert capabilities_of(body["labels"]) == ("eval", "infer", "train")
    snapshot = ClusterSnapshot(nodes=(  # the faster node has no test.npz: accuracy would be n/a there
        node_view("fast", speed_factor=9.0, labels=(DATA,), capabilities=("infer", "train")),
        node_view("holds-split", speed_factor=0.5, labels=(DATA,), capabilities=("eval", "infer", "train")),
    ))
    assert place_training(snapshot, SPEC).server == "holds-split"
    assert place_training(ClusterSnapshot(nodes=snapshot.nodes[:1]), SPEC).server == "fast"  # else as before
