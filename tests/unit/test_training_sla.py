"""The training SLA (virtualization ml-training): schema + rules, errors naming the field."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from deployment_descriptors.unknown_fields import unknown_fields
from deployment_descriptors.validation import sla_schema, validate_microservice, validate_sla
from treeline_common.messages import decode, encode
from treeline_common.training import PrivacySpec, TrainCommand, TrainingError, TrainingSpec, TrainReport

TRAINING: dict[str, Any] = {
    "framework": "flower", "strategy": "fedprox", "parameters": {"proximal_mu": 0.05}, "rounds": 3,
    "min_clients": 2, "fraction_fit": 1.0, "local_epochs": 2, "batch_size": 16, "data": "data:digits",
    "model": "digits-mlp:1", "trainable": "head",
    "differential_privacy": {"clipping_norm": 1.0, "noise_multiplier": 0.5, "side": "server"},
}


def service(**training: Any) -> dict[str, Any]:
    block = copy.deepcopy(TRAINING)
    for key, value in training.items():
        if value is None:
            block.pop(key, None)
        else:
            block[key] = value
    return {"microservice_name": "fl", "microservice_namespace": "demo", "virtualization": "ml-training",
            "memory": 128, "training": block}


def sla(ms: dict[str, Any]) -> dict[str, Any]:
    return {"sla_version": "v2.0", "customerID": "Admin", "applications": [{
        "application_name": "learn", "application_namespace": "demo", "microservices": [ms]}]}


def test_a_full_block_is_valid_and_reads_back() -> None:
    assert validate_sla(sla(service())) == []
    assert unknown_fields(sla(service()), sla_schema()) == []
    spec = TrainingSpec.from_sla(TRAINING)
    assert (spec.strategy, spec.rounds, spec.model_name) == ("fedprox", 3, "digits-mlp")
    assert spec.model_version == "1"
    assert spec.strategy_parameters() == {"proximal_mu": 0.05}
    assert spec.privacy == PrivacySpec(1.0, 0.5, "server")
    assert spec.data_file == "digits.npz" and spec.output_name == "digits-mlp"


def test_defaults_apply() -> None:
    spec = TrainingSpec.from_sla({"framework": "flower", "rounds": 1, "data": "data:x", "model": "m"})
    assert (spec.strategy, spec.min_clients, spec.fraction_fit, spec.local_epochs, spec.batch_size,
            spec.trainable, spec.model_version, spec.privacy) == (
        "fedavg", 2, 1.0, 1, 32, "all", "latest", None)
    assert TrainingSpec.from_sla({"framework": "flower", "rounds": 1, "data": "data:x", "model": "m",
                                  "strategy": "fedadam"}).strategy_parameters()["eta"] == 0.1


@pytest.mark.parametrize(("change", "path", "words"), [
    ({"rounds": 0}, "training.rounds", ">= 1"),
    ({"rounds": None}, "training.rounds", "required"),
    ({"strategy": "fedsgd"}, "training.strategy", "fedavg"),
    ({"framework": "tff"}, "training.framework", "flower"),
    ({"fraction_fit": 0}, "training.fraction_fit", "> 0"),
    ({"data": "digits"}, "training.data", "data:digits"),
    ({"model": "bad name!"}, "training.model", "name:version"),
    ({"trainable": "body"}, "training.trainable", "head"),
    ({"batch_size": 0}, "training.batch_size", ">= 1"),
    ({"differential_privacy": {"clipping_norm": 1.0}}, "training.differential_privacy.noise_multiplier",
     "required"),
    ({"differential_privacy": {"clipping_norm": 0, "noise_multiplier": 1}},
     "training.differential_privacy.clipping_norm", "> 0"),
    ({"differential_privacy": {"clipping_norm": 1, "noise_multiplier": 1, "side": "both"}},
     "training.differential_privacy.side", "client"),
    # rules beyond the schema (TrainingSpec.from_sla)
    ({"parameters": {"eta": 0.1}}, "training.parameters.eta", "not a parameter of fedprox"),
    ({"strategy": "fedavg", "parameters": {"proximal_mu": 0.1}}, "training.parameters.proximal_mu",
     "it takes: none"),
    ({"strategy": "fedadam", "parameters": {"beta_1": 2.0}}, "training.parameters.beta_1", "in [0.0, 1.0]"),
])
def test_errors_name_the_field(change: dict[str, Any], path: str, words: str) -> None:
    problems = validate_microservice(service(**change))
    assert path in [p["path"] for p in problems], problems
    message = next(p["message"] for p in problems if p["path"] == path)
    assert words in message
    whole = validate_sla(sla(service(**change)))
    assert f"applications[0].microservices[0].{path}" in [p["path"] for p in whole]


def test_training_block_needs_its_virtualization_and_vice_versa() -> None:
    ms = service()
    del ms["training"]
    assert {"path": "training", "message": "is a required property"} in validate_microservice(ms)
    other = service()
    other["virtualization"] = "container"
    other["code"] = "docker.io/x"
    problems = validate_microservice(other)
    assert any(p["path"] == "training" and "ml-training" in p["message"] for p in problems)


def test_a_typo_in_the_training_block_is_an_error_naming_the_nearest_field() -> None:
    ms = service()
    ms["training"]["rouns"] = 3
    problems = validate_sla(sla(ms))
    assert {"path": "applications[0].microservices[0].training.rouns",
            "message": "unknown field; did you mean 'rounds'?"} in problems, problems


def test_spec_error_carries_the_path() -> None:
    with pytest.raises(TrainingError) as err:
        TrainingSpec.from_sla({**TRAINING, "min_clients": 0})
    assert err.value.path == "min_clients"


def test_commands_and_reports_round_trip_and_are_checked_on_decode() -> None:
    spec = TrainingSpec.from_sla(TRAINING)
    command = TrainCommand("job-1", "start", "server", spec, "127.0.0.1:9092", clients=3)
    assert decode(TrainCommand, encode(command)) == command
    report = TrainReport("n1", "job-1", "server", "ROUND", round=2, loss=0.3, accuracy=0.9, clients=3)
    assert decode(TrainReport, encode(report)) == report
    from treeline_common.messages import PayloadError

    with pytest.raises(PayloadError, match="state"):
        decode(TrainReport, encode(report).replace(b'"ROUND"', b'"DANCING"'))
    with pytest.raises(PayloadError, match="server_address"):
        decode(TrainCommand, encode(command).replace(b'"127.0.0.1:9092"', b'"nowhere"'))


def test_epsilon_grows_with_rounds_and_shrinks_with_noise() -> None:
    from treeline_common.training import gaussian_epsilon

    assert gaussian_epsilon(0.0, 5) is None
    one, five, quiet = gaussian_epsilon(1.0, 1), gaussian_epsilon(1.0, 5), gaussian_epsilon(4.0, 5)
    assert one is not None and five is not None and quiet is not None
    assert one < five and quiet < five
    # RDP of the Gaussian mechanism: T rounds at z equal one round at z / sqrt(T)
    assert abs(gaussian_epsilon(2.0, 4) - gaussian_epsilon(1.0, 1)) < 1e-9  # type: ignore[operator]
