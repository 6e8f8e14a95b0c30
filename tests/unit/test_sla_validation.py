"""SLA v2.0 validation: real Oakestra SLAs and our examples pass unchanged; every invalid
descriptor is reported at the exact path a person would look at; views carry the values."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from deployment_descriptors import (
    NodeSelector,
    example_path,
    load_profile,
    parse_microservice,
    parse_sla,
    profile_from_dict,
    validate_microservice,
    validate_sla,
)
from treeline_common.errors import InvalidInput, http_status

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((REPO / "deployment_descriptors" / "examples").glob("*.json"))
SHARED = Path(__file__).resolve().parents[3] / "shared"
OAKESTRA_SLAS = sorted((SHARED / "oakestra_sla").glob("*.json"))
MS = "applications[0].microservices[0]"


def load(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def base() -> dict[str, Any]:
    return copy.deepcopy(load(example_path("mobilenet_v2")))


def ms0(doc: dict[str, Any]) -> dict[str, Any]:
    service: dict[str, Any] = doc["applications"][0]["microservices"][0]
    return service


def test_examples_exist() -> None:
    names = {p.stem for p in EXAMPLES}
    assert {"mobilenet_v2", "mobilenet_v2_single", "mobilenet_v2_private_camera"} <= names


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_examples_validate(path: Path) -> None:
    assert validate_sla(load(path)) == []


@pytest.mark.skipif(not OAKESTRA_SLAS, reason="shared/oakestra_sla not present")
@pytest.mark.parametrize("path", OAKESTRA_SLAS, ids=lambda p: p.name)
def test_real_oakestra_slas_validate_unchanged(path: Path) -> None:
    doc = load(path)
    before = copy.deepcopy(doc)
    assert validate_sla(doc) == []
    sla = parse_sla(doc)
    assert doc == before
    assert all(not ms.is_ml and ms.model is None for app in sla.applications for ms in app.microservices)


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], Any]:
    """A mutation that sets a dotted key inside microservice 0 (or the top level with '^')."""
    def apply(doc: dict[str, Any]) -> Any:
        target: dict[str, Any] = doc if path.startswith("^") else ms0(doc)
        keys = path.lstrip("^").split(".")
        for key in keys[:-1]:
            target = target[int(key)] if key.isdigit() else target[key]
        target[keys[-1]] = value
        return doc
    return apply


def _delete(key: str) -> Callable[[dict[str, Any]], Any]:
    def apply(doc: dict[str, Any]) -> Any:
        del ms0(doc)[key]
        return doc
    return apply


def _constraints(*items: dict[str, Any]) -> Callable[[dict[str, Any]], Any]:
    return _set("constraints", list(items))


def _duplicate_service(doc: dict[str, Any]) -> Any:
    doc["applications"][0]["microservices"].append(copy.deepcopy(ms0(doc)))
    return doc


def _drop_applications(doc: dict[str, Any]) -> Any:
    del doc["applications"]
    return doc


def _container_with_model(doc: dict[str, Any]) -> Any:
    ms0(doc).update({"virtualization": "container", "code": "docker.io/library/nginx:latest"})
    return doc


# (id, mutation, expected path, expected message fragment)
INVALID: list[tuple[str, Callable[[dict[str, Any]], Any], str, str]] = [
    ("non-object document", lambda doc: [doc], "", "must be of type object, got array"),
    ("null document", lambda doc: None, "", "must be of type object, got null"),
    ("sla_version wrong type", _set("^sla_version", 2.0), "sla_version", "must be of type string, got number"),
    ("sla_version unknown", _set("^sla_version", "v1.0"), "sla_version", 'must be "v2.0", got "v1.0"'),
    ("missing applications", _drop_applications, "applications", "is a required property"),
    ("microservices not a list", _set("^applications", [{"application_name": "a", "application_namespace": "b",
                                                          "microservices": {"x": 1}}]),
     "applications[0].microservices", "must be of type array, got object"),
    ("application name pattern", _set("^applications.0.application_name", "bad name!"),
     "applications[0].application_name", "must be 1-30 letters, digits"),
    ("ml-model without model", _delete("model"), f"{MS}.model", "is a required property"),
    ("container without code", _set("virtualization", "container"), f"{MS}.code", "is a required property"),
    ("model on a container", _container_with_model, f"{MS}.model",
     "is only allowed when virtualization is 'ml-model'"),
    ("model without name", lambda d: _set("model", {"version": 1})(d), f"{MS}.model.name", "is a required property"),
    ("max_partitions 0", _set("model.max_partitions", 0), f"{MS}.model.max_partitions", "must be >= 1, got 0"),
    ("max_partitions 17", _set("model.max_partitions", 17), f"{MS}.model.max_partitions", "must be <= 16, got 17"),
    ("max_partitions bool", _set("model.max_partitions", True), f"{MS}.model.max_partitions",
     "must be of type integer, got boolean"),
    ("version 0", _set("model.version", 0), f"{MS}.model.version", "must be >= 1, got 0"),
    ("version empty alias", _set("model.version", ""), f"{MS}.model.version", "must not be empty"),
    ("version float", _set("model.version", 1.5), f"{MS}.model.version",
     "must be of type integer or string, got number"),
    ("bad dtype", _set("model.input.dtype", "float64"), f"{MS}.model.input.dtype", 'got "float64"'),
    ("negative shape", _set("model.input.shape", [1, -3, 224, 224]), f"{MS}.model.input.shape[1]",
     "must be >= 1, got -3"),
    ("empty shape", _set("model.input.shape", []), f"{MS}.model.input.shape", "must have at least 1 item"),
    ("input without dtype", _set("model.input", {"name": "input", "shape": [1]}), f"{MS}.model.input.dtype",
     "is a required property"),
    ("unknown objective", _set("model.objective", "accuracy"), f"{MS}.model.objective",
     'must be one of "latency", "throughput"; got "accuracy"'),
    ("unknown variant", _set("model.variants", ["fp32", "int4"]), f"{MS}.model.variants[1]", 'got "int4"'),
    ("duplicate variant", _set("model.variants", ["fp32", "fp32"]), f"{MS}.model.variants", "duplicates"),
    ("accuracy_floor above 1", _set("model.accuracy_floor", 1.5), f"{MS}.model.accuracy_floor",
     "must be <= 1, got 1.5"),
    ("source with both", _set("model.source", {"node": "cam-1", "label": "camera"}), f"{MS}.model.source",
     "got both"),
    ("sink with neither", _set("model.sink", {}), f"{MS}.model.sink", "got neither"),
    ("e2e_latency without threshold", _constraints({"type": "e2e_latency"}), f"{MS}.constraints[0].threshold_ms",
     "is a required property"),
    ("e2e_latency threshold string", _constraints({"type": "e2e_latency", "threshold_ms": "fast"}),
     f"{MS}.constraints[0].threshold_ms", "must be of type number, got string"),
    ("energy zero", _constraints({"type": "energy", "max_mj_per_inference": 0}),
     f"{MS}.constraints[0].max_mj_per_inference", "must be > 0, got 0"),
    ("battery above 100", _constraints({"type": "battery", "min_percent": 130}),
     f"{MS}.constraints[0].min_percent", "must be <= 100, got 130"),
    ("unknown constraint type", _constraints({"type": "e2e_latncy", "threshold_ms": 5}),
     f"{MS}.constraints[0].type", 'got "e2e_latncy"'),
    ("constraint without type", _constraints({"threshold_ms": 5}), f"{MS}.constraints[0].type",
     "is a required property"),
    ("oakestra latency rigidness", _constraints({"type": "latency", "area": "munich-1", "threshold": 100,
                                                 "rigidness": 2, "convergence_time": 300}),
     f"{MS}.constraints[0].rigidness", "must be <= 1, got 2"),
    ("geo location format", _constraints({"type": "geo", "location": "munich", "threshold": 10}),
     f"{MS}.constraints[0].location", "must be \"latitude,longitude\""),
    ("addons needs not list", _constraints({"type": "addons", "needs": "gpu"}), f"{MS}.constraints[0].needs",
     "must be of type array, got string"),
    ("privacy pin both", _constraints({"type": "privacy_pin", "node": "cam-1", "label": "camera"}),
     f"{MS}.constraints[0]", "needs exactly one of 'node' or 'label', got both"),
    ("privacy pin neither", _constraints({"type": "privacy_pin"}), f"{MS}.constraints[0]", "got neither"),
    ("duplicate battery", _constraints({"type": "battery", "min_percent": 20}, {"type": "battery", "min_percent": 30}),
     f"{MS}.constraints[1]", "duplicate 'battery' constraint (first at constraints[0])"),
    ("duplicate microservice names", _duplicate_service, "applications[0].microservices[1].microservice_name",
     "duplicate microservice name \"classifier\" (also at microservices[0])"),
    ("microserviceID set", _set("microserviceID", "abc"), f"{MS}.microserviceID", "must be empty"),
    ("memory negative", _set("memory", -1), f"{MS}.memory", "must be >= 0, got -1"),
    ("connectivity incomplete", _set("connectivity", [{"target_microservice_id": "x", "con_constraints": [
        {"type": "latency", "threshold": 5, "rigidness": 0.9}]}]),
     f"{MS}.connectivity[0].con_constraints[0].convergence_time", "is a required property"),
]


@pytest.mark.parametrize(("mutate", "path", "fragment"), [case[1:] for case in INVALID],
                         ids=[case[0] for case in INVALID])
def test_invalid_descriptor_reports_exact_path(mutate: Callable[[dict[str, Any]], Any], path: str,
                                               fragment: str) -> None:
    problems = validate_sla(mutate(base()))
    matching = [p for p in problems if p["path"] == path]
    assert matching, f"no problem at {path!r}; got {problems}"
    assert any(fragment in p["message"] for p in matching), matching


def test_problems_are_sorted_and_deterministic() -> None:
    doc = base()
    services = doc["applications"][0]["microservices"]
    for index in range(11):
        extra = copy.deepcopy(services[0])
        extra["microservice_name"] = f"s{index}"
        extra["model"]["max_partitions"] = 0
        services.append(extra)
    problems = validate_sla(doc)
    paths = [p["path"] for p in problems]
    assert paths[0] == "applications[0].microservices[1].model.max_partitions"
    assert paths.index("applications[0].microservices[2].model.max_partitions") < \
        paths.index("applications[0].microservices[10].model.max_partitions")
    assert problems == validate_sla(copy.deepcopy(doc))
    assert all(set(p) == {"path", "message"} for p in problems)


def test_parse_sla_raises_invalid_input_with_details() -> None:
    doc = _set("model.max_partitions", 0)(base())
    with pytest.raises(InvalidInput) as info:
        parse_sla(doc)
    assert info.value.message == "invalid SLA descriptor"
    assert info.value.details == [{"path": f"{MS}.model.max_partitions", "message": "must be >= 1, got 0"}]
    assert http_status(info.value) == 400


def test_parse_sla_views() -> None:
    sla = parse_sla(load(example_path("mobilenet_v2")))
    assert (sla.sla_version, sla.customer_id) == ("v2.0", "Admin")
    app = sla.applications[0]
    assert (app.name, app.namespace) == ("vision", "demo")
    ms = app.microservice("classifier")
    assert ms.is_ml and ms.memory_mb == 256 and ms.vcpus == 1
    assert ms.model is not None
    assert (ms.model.name, ms.model.version, ms.model.objective, ms.model.max_partitions) == \
        ("mobilenet_v2", "latest", "latency", 3)
    assert (ms.model.input_name, ms.model.input_shape, ms.model.input_dtype) == \
        ("input", (1, 3, 224, 224), "float32")
    assert ms.model.variants == ("fp32",) and ms.model.accuracy_floor == 0.0
    assert ms.ml_constraints.latency_ms is None and ms.ml_constraints.privacy_pin is None
    assert ms.raw["model"]["name"] == "mobilenet_v2"
    with pytest.raises(KeyError):
        app.microservice("nope")


def test_single_node_baseline_example() -> None:
    ms = parse_sla(load(example_path("mobilenet_v2_single"))).applications[0].microservices[0]
    assert ms.name == "classifier-single" and ms.model is not None and ms.model.max_partitions == 1


def test_ml_constraint_views() -> None:
    sla = parse_sla(load(example_path("mobilenet_v2_private_camera")))
    ms = sla.applications[0].microservices[0]
    c = ms.ml_constraints
    assert (c.latency_ms, c.energy_mj, c.min_battery_percent) == (200.0, 150.0, 30.0)
    assert (c.privacy_pin_node, c.privacy_pin_label) == (None, "camera")
    assert c.privacy_pin == NodeSelector(label="camera")
    assert c.privacy_pin.matches("cam-1", ["camera"]) and not c.privacy_pin.matches("server-1", ["server"])
    assert ms.model is not None and ms.model.source == NodeSelector(label="camera")
    assert ms.constraints_of("battery") == ({"type": "battery", "min_percent": 30},)


def test_model_defaults_applied() -> None:
    doc = base()
    ms0(doc)["model"] = {"name": "tiny", "version": 2}
    model = parse_sla(doc).applications[0].microservices[0].model
    assert model is not None
    assert (model.version, model.objective, model.max_partitions, model.variants, model.accuracy_floor) == \
        (2, "latency", 1, ("fp32",), 0.0)
    assert model.input_shape is None and model.source is None


def test_views_do_not_follow_later_changes() -> None:
    doc = base()
    sla = parse_sla(doc)
    ms0(doc)["model"]["name"] = "changed"
    assert sla.applications[0].microservices[0].raw["model"]["name"] == "mobilenet_v2"


def test_parse_microservice_paths_are_relative() -> None:
    service = ms0(base())
    assert parse_microservice(service).model is not None
    service["model"]["max_partitions"] = 0
    assert validate_microservice(service) == [{"path": "model.max_partitions", "message": "must be >= 1, got 0"}]
    with pytest.raises(InvalidInput):
        parse_microservice(service)


def test_default_profile_weights_sum_to_one() -> None:
    profile = load_profile("default")
    assert set(profile.weights) == {"memory", "compute", "battery", "link"}
    assert abs(sum(profile.weights.values()) - 1.0) < 1e-9 and profile.comment
    with pytest.raises(InvalidInput):
        profile_from_dict({"name": "x", "weights": {"memory": 0.5, "compute": 0.4}})


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "deployment_descriptors", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=60)


def test_cli_valid_file_exits_0() -> None:
    result = _cli("validate", *(str(p) for p in EXAMPLES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count(": valid") == len(EXAMPLES)


def test_cli_invalid_file_exits_1(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(_set("model.max_partitions", 0)(base())), encoding="utf-8")
    broken = tmp_path / "broken.json"
    broken.write_text("{not json", encoding="utf-8")
    result = _cli("validate", str(example_path("mobilenet_v2")), str(bad), str(broken))
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert f"{bad}: {MS}.model.max_partitions: must be >= 1, got 0" in lines
    assert any(line.startswith(f"{broken}: (document): not valid JSON") for line in lines)


def test_cli_usage_error_exits_2() -> None:
    assert _cli().returncode == 2
