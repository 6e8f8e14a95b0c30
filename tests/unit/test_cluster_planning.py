"""Placement documents and deploy commands built from a plan (pure; real ml_scheduler)."""

from __future__ import annotations

import hashlib

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from cluster_orchestrator import planning
from cluster_orchestrator.tracker import StageTracker
from ml_scheduler.extract import Partition
from treeline_common.jobs import Entry, Placement
from treeline_common.messages import StageState

NODES = {
    "n-a": {"node_id": "n-a", "name": "server-1", "profile": "server", "data_endpoint": "tcp://127.0.0.1:7001",
            "online": True, "speed_factor": 1.0, "memory_limit_mb": 16384, "labels": ["server"]},
    "n-b": {"node_id": "n-b", "name": "rpi4-1", "profile": "rpi4", "data_endpoint": "tcp://127.0.0.1:7002",
            "online": True, "speed_factor": 0.25, "memory_limit_mb": 4096, "labels": ["rpi"],
            "battery": {"percent": 80.0, "charging": False},
            "telemetry": {"speed_factor": 0.2, "battery": {"percent": 55.0},
                          "accelerators": [{"kind": "npu"}]}},
}


def two_parts() -> list[Partition]:
    return [Partition(0, b"", "a" * 64, ("input",), ("h",), 100, 10, 64),
            Partition(1, b"", "b" * 64, ("h",), ("output",), 50, 5, 0)]


def test_placement_has_the_contract_shape() -> None:
    placement = planning.build_placement("svc-0", 3, "flops-balanced",
                                         {"name": "input", "shape": [1, 8], "dtype": "float32"}, ["output"],
                                         two_parts(), ["n-a", "n-b"], NODES)
    assert Placement.from_dict(placement.to_dict()) == placement  # the wire form round-trips
    assert placement.relay is None
    assert placement.entry == Entry("n-a", "tcp://127.0.0.1:7001", "svc-0/3/0")
    first, second = placement.stages
    assert (second.node_name, second.profile, second.stage_key) == ("rpi4-1", "rpi4", "svc-0/3/1")
    assert (first.cut_bytes, second.cut_bytes, second.sha256) == (64, 0, "b" * 64)
    assert {s.state for s in placement.stages} == {"PENDING"}


def test_deploy_commands_chain_stages() -> None:
    placement = planning.build_placement("svc-0", 2, "s", {"name": "input"}, ["output"], two_parts(),
                                         ["n-a", "n-b"], NODES)
    (node0, cmd0), (node1, cmd1) = planning.deploy_commands(placement, "http://root:10000/")
    assert (node0, node1) == ("n-a", "n-b")
    assert cmd0.next is not None and (cmd0.next.node_id, cmd0.next.endpoint, cmd0.next.stage_key) == (
        "n-b", "tcp://127.0.0.1:7002", "svc-0/2/1")
    assert cmd1.next is None and cmd1.generation == 2 and cmd1.inputs == ["h"]
    assert cmd0.artifact_url == "http://root:10000/api/artifacts/" + "a" * 64


def test_plan_cost_follows_the_objective() -> None:
    assert planning.plan_cost({"objective": "latency", "latency_ms": 5.0, "bottleneck_ms": 2.0}) == 5.0
    assert planning.plan_cost({"objective": "throughput", "latency_ms": 5.0, "bottleneck_ms": 2.0}) == 2.0
    assert planning.plan_cost(None) is None


def test_node_view_prefers_fresh_telemetry() -> None:
    view = planning.node_view_fields(NODES["n-b"])
    assert view["speed_factor"] == 0.2 and view["battery_percent"] == 55.0
    assert view["accelerators"] == ("npu",)
    assert view["labels"] == ("rpi",) and view["memory_limit_mb"] == 4096
    assert planning.node_view_fields({"node_id": "x", "name": "x"})["memory_limit_mb"] is None


def tiny_model() -> onnx.ModelProto:
    rng = np.random.default_rng(1)
    inits = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n)
             for n, s in (("w1", (8, 16)), ("w2", (16, 4)))]
    nodes = [helper.make_node("MatMul", ["input", "w1"], ["h1"]), helper.make_node("Relu", ["h1"], ["r1"]),
             helper.make_node("MatMul", ["r1", "w2"], ["output"])]
    graph = helper.make_graph(nodes, "t", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 8])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def microservice(max_partitions: int, **model: object) -> object:
    return planning.parse_job_microservice({
        "microservice_name": "m", "microservice_namespace": "test", "virtualization": "ml-model",
        "model": {"name": "tiny", "max_partitions": max_partitions, **model}})


def plan(nodes: list[dict], max_partitions: int, constraints: list[dict] | None = None,
         **model: object) -> planning.PlanOutcome:
    from deployment_descriptors import load_profile
    from ml_scheduler.costmodel import CostModel
    from ml_scheduler.graph import analyze_model

    graph = analyze_model(tiny_model())
    ms = microservice(max_partitions, **model) if constraints is None else planning.parse_job_microservice({
        "microservice_name": "m", "microservice_namespace": "test", "virtualization": "ml-model",
        "constraints": constraints, "model": {"name": "tiny", "max_partitions": max_partitions, **model}})
    return planning.plan(tiny_model(), graph, nodes, ms, load_profile(), CostModel.from_profiles(graph, {}))


def test_compression_opted_in_but_not_applied_says_why() -> None:
    allow = [{"type": "boundary_compression", "allow": ["fp16"], "max_output_abs_diff": 0.01}]
    outcome = plan([dict(NODES["n-a"])], max_partitions=1, constraints=allow)
    assert outcome.explanation["compression"]["codec"] is None
    assert outcome.explanation["compression"]["note"] == "not applied: one stage, no link to compress"
    assert "compression" not in plan([dict(NODES["n-a"])], max_partitions=1).explanation  # not asked


def test_plan_places_over_online_nodes_only() -> None:
    nodes = [dict(NODES["n-a"]), dict(NODES["n-b"], online=False)]
    outcome = plan(nodes, max_partitions=3)
    assert outcome.schedulable and outcome.node_ids == ["n-a"]
    assert outcome.reasons["n-b"].startswith("offline") and outcome.output_names == ("output",)
    assert all(hashlib.sha256(p.model_bytes).hexdigest() == p.sha256 for p in outcome.partitions)
    assert outcome.predicted["latency_ms"] > 0 and outcome.explanation["shortlist"] == ["n-a"]


def test_plan_without_online_nodes_is_unschedulable_with_reasons() -> None:
    outcome = plan([dict(NODES["n-a"], online=False)], max_partitions=2)
    assert not outcome.schedulable and outcome.reasons["n-a"].startswith("offline")


def test_input_on_another_node_gets_a_relay_entry() -> None:
    # The source (rpi4-1) is slow and the tiny model's input is small: the plan runs on the
    # server, so requests must enter through a relay on the rpi.
    nodes = [dict(NODES["n-a"]), dict(NODES["n-b"], telemetry=None, speed_factor=0.01)]
    outcome = plan(nodes, max_partitions=2, source={"node": "rpi4-1"})
    assert outcome.schedulable and outcome.node_ids == ["n-a"] and outcome.relay_node_id == "n-b"
    placement = planning.build_placement("svc-0", 1, outcome.strategy, {"name": "input"}, ["output"],
                                         outcome.partitions, outcome.node_ids, NODES, outcome.predicted,
                                         outcome.relay_node_id)
    assert placement.entry == Entry("n-b", "tcp://127.0.0.1:7002", "svc-0/1/-1")
    assert placement.predicted is not None
    assert placement.predicted["latency_ms"] == outcome.predicted["latency_ms"]
    assert (placement.stages[0].predicted_transfer_in_ms or 0.0) > 0  # the input crosses the rpi uplink
    (relay_node, relay), (node0, _) = planning.deploy_commands(placement, "http://root")
    assert (relay_node, relay.relay, relay.stage, relay.sha256) == ("n-b", True, -1, "")
    assert relay.next is not None and relay.next.stage_key == "svc-0/1/0" and node0 == "n-a"


def test_stage_tracker_reports_ready_failed_and_timeout() -> None:
    tracker = StageTracker()
    tracker.expect("d", 1, {0: "n-a", 1: "n-b"})
    assert not tracker.report("n-b", StageState("n-b", "d", 0, "READY", generation=1))  # wrong node
    assert not tracker.report("n-a", StageState("n-a", "d", 0, "READY", generation=0))  # old generation
    tracker.report("n-a", StageState("n-a", "d", 0, "READY", generation=1))
    state, detail = tracker.wait("d", 1, timeout=0.05)
    assert state == "TIMEOUT" and detail == "1@n-b (no report)"
    tracker.report("n-b", StageState("n-b", "d", 1, "READY", generation=1))
    assert tracker.wait("d", 1, timeout=1.0) == ("READY", "")
    tracker.expect("d", 2, {0: "n-a"})
    assert tracker.wait("d", 1, timeout=1.0) == ("SUPERSEDED", "")
    tracker.node_lost("n-a")
    state, detail = tracker.wait("d", 2, timeout=1.0)
    assert state == "FAILED" and "went offline" in detail
