"""The cascade's contracts: the SLA block's validation, the typed job and deploy-command fields,
the confidence rule, the escalation decision and the calibration (all pure)."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import pytest

from deployment_descriptors import validate_sla
from node_engine.refusals import deploy_problems
from treeline_common import wire
from treeline_common.cascade import (
    CascadeError,
    CascadeSpec,
    EdgeRule,
    calibrate,
    cascade_accuracy,
    confidence,
    parse_model_ref,
    softmax_top1,
)
from treeline_common.messages import DeployCommand, NextStage

SLA: dict[str, Any] = {
    "sla_version": "v2.0", "customerID": "Admin",
    "applications": [{
        "applicationID": "", "application_name": "demo", "application_namespace": "default",
        "application_desc": "", "microservices": [{
            "microserviceID": "", "microservice_name": "digits", "microservice_namespace": "default",
            "virtualization": "ml-model", "cmd": [], "memory": 100, "vcpus": 1, "vgpus": 0, "vtpus": 0,
            "bandwidth_in": 0, "bandwidth_out": 0, "storage": 0, "code": "", "state": "", "port": "",
            "added_files": [],
            "model": {"name": "digits", "version": 1,
                      "cascade": {"small": "digits:2", "threshold": 0.9}}}]}]}
PATH = "applications[0].microservices[0].model.cascade"


def with_cascade(**block: object) -> dict[str, Any]:
    doc = copy.deepcopy(SLA)
    doc["applications"][0]["microservices"][0]["model"]["cascade"] = block
    return doc


def test_a_valid_block_has_no_problems() -> None:
    assert validate_sla(SLA) == []
    assert validate_sla(with_cascade(small="digits", large="digits:1", accuracy_floor=0.97,
                                     confidence="output:prob", edge={"label": "edge"})) == []


@pytest.mark.parametrize(("block", "path", "words"), [
    ({"small": "digits:2"}, PATH, "exactly one of 'threshold' or 'accuracy_floor', got neither"),
    ({"small": "digits:2", "threshold": 0.5, "accuracy_floor": 0.9}, PATH, "got both"),
    ({"small": "digits:2", "threshold": 1.5}, f"{PATH}.threshold", "<= 1"),
    ({"small": "no spaces allowed", "threshold": 0.5}, f"{PATH}.small", "name or name:version"),
    ({"small": "digits:2", "threshold": 0.5, "large": "other"}, f"{PATH}.large", "this model block's model"),
    ({"small": "digits:2", "threshold": 0.5, "large": "digits:7"}, f"{PATH}.large", "digits:1"),
    ({"small": "digits:2", "threshold": 0.5, "confidence": "entropy"}, f"{PATH}.confidence", "softmax_top1"),
    ({"small": "digits:2", "threshold": 0.5, "edge": {}}, f"{PATH}.edge", "exactly one of 'node' or 'label'"),
    ({"threshold": 0.5}, f"{PATH}.small", "required"),
    ({"small": "digits:2", "threshold": 0.5, "bogus": 1}, PATH, "bogus"),
])
def test_bad_blocks_name_the_field(block: dict[str, Any], path: str, words: str) -> None:
    problems = validate_sla(with_cascade(**block))
    assert any(p["path"] == path and words in p["message"] for p in problems), problems


def test_spec_defaults_and_versions() -> None:
    spec = CascadeSpec.from_sla({"name": "m", "cascade": {"small": "s", "accuracy_floor": 0.9}})
    assert spec is not None and (spec.small_name, spec.small_version, spec.threshold) == ("s", "latest", None)
    assert spec.confidence == "softmax_top1" and spec.probe == "digits"
    assert parse_model_ref("m:3", "x") == ("m", 3) and parse_model_ref("m:prod", "x") == ("m", "prod")
    assert CascadeSpec.from_sla({"name": "m"}) is None
    with pytest.raises(CascadeError, match=r"cascade\.small"):
        parse_model_ref("", "cascade.small")


def test_deploy_command_cascade_fields_are_validated() -> None:
    route = NextStage("n2", "tcp://127.0.0.1:5000", "d-0/1/0")
    cmd = DeployCommand("d-0", -3, "http://x/a", "a" * 64, ["x"], ["y"], generation=1, escalate_to=route,
                        cascade_threshold=0.8, cascade_confidence="softmax_top1")
    decoded = wire.from_dict(DeployCommand, wire.to_dict(cmd))
    assert decoded.escalate_to == route and decoded.cascade_threshold == 0.8
    body = wire.to_dict(cmd)
    body["cascade_threshold"] = 1.2
    body["cascade_confidence"] = "nope"
    with pytest.raises(wire.WireError) as bad:
        wire.from_dict(DeployCommand, body)
    assert {d["path"] for d in bad.value.details} == {"cascade_threshold", "cascade_confidence"}
    with pytest.raises(ValueError, match="escalate_to"):
        DeployCommand("d-0", 0, "http://x/a", "a" * 64, ["x"], ["y"], next=route, escalate_to=route)


def test_softmax_top1_and_confidence() -> None:
    logits = np.array([[0.0, 0.0], [10.0, 0.0]], dtype=np.float32)
    np.testing.assert_allclose(softmax_top1(logits), [0.5, 1 / (1 + np.exp(-10.0))])
    assert confidence({"logits": logits}) == pytest.approx(0.5)  # the least confident row decides
    assert confidence({"a": np.array([[1000.0, 0.0]]), "b": np.zeros(1)}) == pytest.approx(1.0)  # no overflow
    assert confidence({"logits": logits, "p": np.array([0.7, 0.9])}, "output:p") == pytest.approx(0.7)
    with pytest.raises(ValueError, match="no output 'q'"):
        confidence({"p": np.ones(1)}, "output:q")
    with pytest.raises(ValueError, match="NaN"):
        confidence({"p": np.array([np.nan])}, "output:p")


def test_escalation_decision_at_the_threshold() -> None:
    rule = EdgeRule(threshold=0.75)
    assert rule.escalates({"p": np.array([[3.0, 0.0, 0.0]])})[0] is False  # 0.91 >= 0.75: answered
    assert rule.escalates({"p": np.array([[0.1, 0.0, 0.0]])})[0] is True  # 0.35 < 0.75: escalated
    at = EdgeRule(threshold=0.5, confidence="output:c")
    assert at.escalates({"c": np.array([0.5])}) == (False, 0.5)  # at the threshold: the edge answers
    assert EdgeRule(threshold=0.0).escalates({"c": np.array([[9.0, 0.0]])})[0] is False


def test_calibration_picks_the_lowest_threshold_meeting_the_floor() -> None:
    conf = np.array([0.2, 0.4, 0.6, 0.8, 0.95, 0.99])
    small = np.array([False, False, True, True, True, True])
    large = np.array([True, True, True, True, True, False])
    result = calibrate(conf, small, large, 5 / 6, small_ms=1.0, escalation_ms=10.0)
    assert result.met and result.threshold == pytest.approx(0.3)  # escalate only 0.2: 5/6 correct
    assert result.escalated_share == pytest.approx(1 / 6) and result.accuracy == pytest.approx(5 / 6)
    assert result.expected_mean_ms == pytest.approx(1.0 + 10.0 / 6)
    full = calibrate(conf, small, large, 1.0)
    assert full.met and full.threshold == pytest.approx(0.5)  # escalate 0.2 and 0.4: all right
    accuracy, share = cascade_accuracy(conf, small, large, full.threshold)
    assert accuracy == 1.0 and share == pytest.approx(2 / 6)
    assert calibrate(conf, small, large, 0.5).threshold == 0.0  # the small model alone meets it
    unmet = calibrate(conf, np.zeros(6, bool), np.zeros(6, bool), 0.1)
    assert not unmet.met and unmet.threshold == 1.0
    with pytest.raises(ValueError):
        calibrate([], [], [], 0.5)


def test_a_node_refuses_a_bad_escalation_route() -> None:
    route = NextStage("n2", "udp://nowhere", "")
    cmd = DeployCommand("d-0", 900, "http://x/a", "a" * 64, ["x"], ["y"], escalate_to=route)
    assert deploy_problems(cmd) == ["escalate_to.endpoint: must be tcp://host:port, not 'udp://nowhere'",
                                    "escalate_to.stage_key: must not be empty"]
