"""MQTT payloads: every schema round-trips, nested types come back typed, bad payloads raise."""

from __future__ import annotations

import json

import pytest

from treeline_common.messages import (
    Accelerator,
    Battery,
    DeleteCommand,
    DeployCommand,
    NextStage,
    NodeStatus,
    NodeTelemetry,
    PayloadError,
    StageState,
    StageStats,
    decode,
    encode,
    parse_stage_key,
    stage_key,
)

SAMPLES = [
    NodeStatus(node_id="n1", state="online", seq=7, ts=1.5),
    NodeTelemetry(
        node_id="n1", ts=2.0, cpu_percent=12.5, cpu_count=4, memory_percent=40.0, memory_total_mb=8000,
        memory_available_mb=4000, memory_limit_mb=4096, profile="jetson-nano", emulated=True,
        speed_factor=0.5, accelerators=[Accelerator(kind="gpu", name="maxwell", memory_mb=4096, emulated=True)],
        battery=Battery(percent=80.0, charging=True), stages=["d/0", "d/1"],
    ),
    NodeTelemetry(node_id="n2", ts=0.0, cpu_percent=0.0, cpu_count=1, memory_percent=1.0,
                  memory_total_mb=1, memory_available_mb=1, memory_limit_mb=1),
    StageState(node_id="n1", deployment_id="d", stage=0, state="FAILED", generation=3, reason="why", load_ms=2.5),
    StageStats(node_id="n1", deployment_id="d", stage=1, requests=10, compute_ms_mean=1.25),
    DeployCommand(deployment_id="d", stage=0, artifact_url="http://x/a", sha256="ab" * 32, inputs=["x"],
                  outputs=["h"], next=NextStage(node_id="n2", endpoint="tcp://127.0.0.1:5", stage_key="d/1"),
                  generation=2),
    DeployCommand(deployment_id="d", stage=1, artifact_url="http://x/b", sha256="cd" * 32, inputs=["h"],
                  outputs=["y"]),
    DeleteCommand(deployment_id="d", stage=None),
    DeleteCommand(deployment_id="d", stage=1),
]


@pytest.mark.parametrize("message", SAMPLES, ids=lambda m: type(m).__name__)
def test_round_trip(message: object) -> None:
    assert decode(type(message), encode(message)) == message


def test_nested_types_come_back_as_dataclasses() -> None:
    telemetry = decode(NodeTelemetry, encode(SAMPLES[1]))
    assert isinstance(telemetry.accelerators[0], Accelerator)
    assert isinstance(telemetry.battery, Battery)
    deploy = decode(DeployCommand, encode(SAMPLES[5]))
    assert isinstance(deploy.next, NextStage) and deploy.next.stage_key == "d/1"


def test_encode_adds_schema_version_and_unknown_fields_are_tolerated() -> None:
    body = json.loads(encode(SAMPLES[0]))
    assert body["v"] == 1
    body["added_by_a_newer_sender"] = True
    assert decode(NodeStatus, json.dumps(body)) == SAMPLES[0]


@pytest.mark.parametrize(
    "payload, match",
    [
        (b"\xff\xfe", "not valid JSON"),
        (b"{nope", "not valid JSON"),
        (b"[1, 2]", "not an object"),
        (json.dumps({"node_id": "n", "state": "online"}).encode(), "schema version"),
        (json.dumps({"v": 2, "node_id": "n", "state": "online"}).encode(), "schema version"),
        (json.dumps({"v": 1, "node_id": "n"}).encode(), "NodeStatus"),
    ],
)
def test_bad_status_payloads_raise_payload_error(payload: bytes, match: str) -> None:
    with pytest.raises(PayloadError, match=match):
        decode(NodeStatus, payload)


@pytest.mark.parametrize(
    "cls, body, match",
    [
        (DeployCommand, {"deployment_id": "d", "stage": 0, "artifact_url": "u", "sha256": "s", "inputs": [],
                         "outputs": [], "next": "tcp://nowhere"}, "next must be an object"),
        (DeployCommand, {"deployment_id": "d", "stage": 0, "artifact_url": "u", "sha256": "s", "inputs": [],
                         "outputs": [], "next": {"node_id": "n"}}, "next.endpoint is required"),
        (NodeTelemetry, {"node_id": "n", "ts": 0, "cpu_percent": 0, "cpu_count": 1, "memory_percent": 0,
                         "memory_total_mb": 1, "memory_available_mb": 1, "memory_limit_mb": 1,
                         "accelerators": {"kind": "gpu"}}, "accelerators must be a list"),
        (NodeTelemetry, {"node_id": "n", "ts": 0, "cpu_percent": 0, "cpu_count": 1, "memory_percent": 0,
                         "memory_total_mb": 1, "memory_available_mb": 1, "memory_limit_mb": 1,
                         "battery": 50}, "battery must be an object"),
    ],
)
def test_bad_nested_payloads_raise_payload_error(cls: type, body: dict, match: str) -> None:
    with pytest.raises(PayloadError, match=match):
        decode(cls, json.dumps({"v": 1, **body}))


def test_stage_key() -> None:
    assert stage_key("svc-0", 2, 3) == "svc-0/3/2"
    assert parse_stage_key(stage_key("svc-0", 2, 3)) == ("svc-0", 3, 2)


def test_published_schemas_accept_what_the_decoder_accepts() -> None:
    """The OpenAPI body schemas come from the same type hints the decoder checks."""
    import jsonschema

    from root_orchestrator.openapi import body_schemas
    from treeline_common.jobs import ClusterPush, Entry, JobReport, JobStatus, Placement, StagePlacement

    placement = Placement("d-0", 1, (StagePlacement(0, "n", "tcp://n:1", "d-0/1/0"),), entry=Entry("n", "tcp://n:1",
                                                                                                 "d-0/1/0"))
    push = ClusterPush({"active_nodes": 1}, (JobReport("s", 0, JobStatus.RUNNING, placement=placement),))
    components = body_schemas()
    schema = {**components["ClusterPush"], "components": {"schemas": components}}
    jsonschema.validate(push.to_dict(), schema)
    bad = push.to_dict()
    bad["jobs"][0]["status"] = "BOGUS"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)
