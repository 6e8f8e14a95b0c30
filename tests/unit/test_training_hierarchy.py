"""Hierarchical federated learning: the SLA block, the job part and the aggregator command."""

from __future__ import annotations

from typing import Any

import pytest
from test_training_sla import TRAINING, service, sla

from deployment_descriptors.validation import validate_microservice, validate_sla
from treeline_common.errors import InvalidInput
from treeline_common.jobs import JobRequest, ModelRef
from treeline_common.messages import PayloadError, decode, encode
from treeline_common.training import TrainCommand, TrainingSpec
from treeline_common.training_hierarchy import HierarchySpec, TrainingPart


def test_absent_block_is_flat_and_an_empty_one_takes_the_defaults() -> None:
    assert TrainingSpec.from_sla(TRAINING).hierarchical is None
    spec = TrainingSpec.from_sla({**TRAINING, "hierarchical": {}})
    assert spec.hierarchical == HierarchySpec(cluster_rounds=1, min_clusters=2)
    spec = TrainingSpec.from_sla({**TRAINING, "hierarchical": {"cluster_rounds": 3, "min_clusters": 1}})
    assert spec.hierarchical == HierarchySpec(3, 1)
    assert validate_sla(sla(service(hierarchical={"cluster_rounds": 3}))) == []


@pytest.mark.parametrize(("block", "path", "words"), [
    ({"cluster_rounds": 0}, "training.hierarchical.cluster_rounds", "must be an integer in 1..100, got 0"),
    ({"cluster_rounds": 101}, "training.hierarchical.cluster_rounds", "must be an integer in 1..100"),
    ({"min_clusters": 0}, "training.hierarchical.min_clusters", "must be an integer in 1..1000"),
    ({"cluster_round": 2}, "training.hierarchical.cluster_round", "cluster_rounds"),  # the field it meant
])
def test_bad_blocks_are_refused_naming_the_field(block: dict[str, Any], path: str, words: str) -> None:
    problems = validate_microservice(service(hierarchical=block))
    assert [p for p in problems if p["path"] == path and words in p["message"]], problems
    whole = validate_sla(sla(service(hierarchical=block)))
    assert f"applications[0].microservices[0].{path}" in [p["path"] for p in whole]


def test_client_side_privacy_is_refused_in_hierarchical_mode() -> None:
    dp = {"clipping_norm": 1.0, "noise_multiplier": 0.5, "side": "client"}
    problems = validate_microservice(service(hierarchical={}, differential_privacy=dp))
    assert any(p["path"] == "training.differential_privacy.side" and "hierarchical" in p["message"]
               for p in problems), problems
    server_side = {**dp, "side": "server"}
    assert validate_microservice(service(hierarchical={}, differential_privacy=server_side)) == []


def test_the_part_travels_in_the_job_request_and_is_checked_on_decode() -> None:
    spec = TrainingSpec.from_sla({**TRAINING, "hierarchical": {"cluster_rounds": 2}})
    job = JobRequest("svc", 3, {"microservice_name": "fl"}, ModelRef("m", 1, "a" * 64), training=spec,
                     training_part=TrainingPart("cluster", 2, ("cluster-1", "cluster-2")))
    back = JobRequest.from_dict(job.to_dict())
    assert back == job and back.training is not None and back.training.hierarchical == HierarchySpec(2, 2)
    body = job.to_dict()
    body["training_part"]["role"] = "leaf"
    with pytest.raises(InvalidInput) as err:
        JobRequest.from_dict(body)
    assert any(d["path"] == "training_part.role" for d in err.value.details), err.value.details


def test_an_aggregator_command_needs_its_upstream_and_round_trips() -> None:
    spec = TrainingSpec.from_sla({**TRAINING, "hierarchical": {}, "differential_privacy": None})
    command = TrainCommand("j", "start", "aggregator", spec, "127.0.0.1:0", upstream_address="10.0.0.1:9092")
    assert decode(TrainCommand, encode(command)) == command
    with pytest.raises(PayloadError, match="upstream_address"):
        decode(TrainCommand, encode(command).replace(b'"10.0.0.1:9092"', b'""'))
