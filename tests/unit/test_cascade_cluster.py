"""A cascade deployment at the cluster (pure): the edge node, the placement with its edge
stage as the entry, and the deploy commands (the edge escalates to the large model's first
stage, signed with the same data key; the large model's first stage is no longer an entry)."""

from __future__ import annotations

from typing import Any

import pytest
from onnx import TensorProto, helper

from cluster_orchestrator.cascade import edge_node, with_edge_stage
from cluster_orchestrator.keys import DataPlaneSecurity
from cluster_orchestrator.planning import deploy_commands
from treeline_cli.describe import cascade_line
from treeline_common.cascade import CASCADE_STAGE, CascadeJob
from treeline_common.errors import Unschedulable
from treeline_common.jobs import Entry, Placement, StagePlacement

SMALL_SHA = "b" * 64


def _model(input_name: str = "x") -> bytes:
    graph = helper.make_graph([helper.make_node("Identity", [input_name], ["logits"])], "small",
                              [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 4])])
    return helper.make_model(graph).SerializeToString()


def _node(name: str, speed: float, labels: tuple[str, ...] = (), online: bool = True) -> dict[str, Any]:
    return {"node_id": f"id-{name}", "name": name, "online": online, "speed_factor": speed,
            "labels": list(labels), "data_endpoint": f"tcp://127.0.0.1:{5000 + len(name)}"}


NODES = [_node("server", 1.0), _node("pi", 0.1), _node("nano", 0.3, ("edge",)),
         _node("zero", 0.01, online=False)]


def _placement() -> Placement:
    stage = StagePlacement(index=0, node_id="id-server", node_name="server", endpoint="tcp://127.0.0.1:5006",
                           stage_key="d-0/2/0", inputs=("x",), outputs=("logits",), sha256="a" * 64)
    return Placement(deployment_id="d-0", generation=2, stages=(stage,),
                     inputs=({"name": "x", "shape": [1, 4], "dtype": "float32"},),
                     entry=Entry("id-server", stage.endpoint, stage.stage_key))


def _job(**fields: Any) -> CascadeJob:
    return CascadeJob(small_name="digits", small_version=2, small_sha256=SMALL_SHA, threshold=0.8, **fields)


def test_the_edge_node_follows_the_selector_else_the_slowest_apart_from_the_large_model() -> None:
    assert edge_node(NODES, frozenset({"id-server"}), None)[0]["name"] == "pi"  # zero is offline
    assert edge_node(NODES, frozenset({"id-server", "id-pi", "id-nano"}), None)[0]["name"] == "pi"
    assert edge_node(NODES, frozenset(), {"label": "edge"})[0]["name"] == "nano"
    assert edge_node(NODES, frozenset(), {"node": "server"})[0]["name"] == "server"
    with pytest.raises(Unschedulable, match="no online node matches"):
        edge_node(NODES, frozenset(), {"node": "zero"})


def test_the_edge_stage_is_the_entry_and_escalates_to_stage_0() -> None:
    placement, why = with_edge_stage(_placement(), _job(calibration={"accuracy": 0.99}), _model(), NODES)
    edge = placement.cascade
    assert edge is not None and edge.index == CASCADE_STAGE and edge.node_name == "pi"
    assert placement.entry == Entry("id-pi", edge.endpoint, "d-0/2/900")
    assert why["edge_node"] == "pi" and why["threshold"] == 0.8 and why["calibration"] == {"accuracy": 0.99}
    assert Placement.from_dict(placement.to_dict()) == placement  # the stored document round-trips
    assert {s.node_id for s in placement.all_stages()} == {"id-server", "id-pi"}
    commands = dict(deploy_commands(placement, "http://root", DataPlaneSecurity(secret=b"s" * 32)))
    large, small = commands["id-server"], commands["id-pi"]
    assert not large.entry and large.escalate_to is None
    assert small.entry and small.next is None and small.sha256 == SMALL_SHA
    assert small.escalate_to is not None and small.escalate_to.stage_key == "d-0/2/0"
    assert small.escalate_to.endpoint == "tcp://127.0.0.1:5006"
    assert (small.cascade_threshold, small.cascade_confidence) == (0.8, "softmax_top1")
    assert small.data_key == large.data_key != ""  # one generation: the escalation is signed with its key
    assert small.artifact_url == f"http://root/api/artifacts/{SMALL_SHA}"


def test_a_small_model_with_other_inputs_is_unschedulable() -> None:
    with pytest.raises(Unschedulable) as raised:
        with_edge_stage(_placement(), _job(), _model("pixels"), NODES)
    assert raised.value.details[0]["path"] == "model.cascade.small"



def test_describe_shows_the_cascade_and_its_calibration() -> None:
    calibration = {"floor": 0.97, "probe": "digits", "probe_size": 450, "reference": "labels",
                   "accuracy": 0.9711, "escalated_share": 0.2378}
    _, why = with_edge_stage(_placement(), _job(calibration=calibration), _model(), NODES)
    line = cascade_line(why)
    assert line.startswith("cascade: digits v2 on pi (the slowest online node running none of the large")
    assert "escalates below softmax_top1 0.8" in line and "accuracy 0.9711, 23.8 % escalated" in line
