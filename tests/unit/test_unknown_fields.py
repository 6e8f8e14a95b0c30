"""Unknown SLA fields are warnings naming the path and the closest known name
(``deployment_descriptors.unknown_fields``), at the root's apply and plan answers and in the CLI."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from deployment_descriptors.unknown_fields import unknown_fields
from deployment_descriptors.validation import sla_schema

EXAMPLES = Path(__file__).resolve().parents[2] / "deployment_descriptors" / "examples"
OAKESTRA = Path(__file__).resolve().parents[3] / "shared" / "oakestra_sla"


def _example() -> dict[str, Any]:
    return dict(json.loads((EXAMPLES / "mobilenet_v2.json").read_text()))


def test_known_slas_have_no_unknown_fields() -> None:
    files = sorted(EXAMPLES.glob("*.json")) + sorted(OAKESTRA.glob("*.json"))
    assert files
    for path in files:
        assert unknown_fields(json.loads(path.read_text()), sla_schema()) == [], path


def test_typos_are_named_with_the_nearest_known_field() -> None:
    sla = _example()
    service = sla["applications"][0]["microservices"][0]
    service["memroy"] = service.pop("memory")
    service["model"]["objectiv"] = "latency"
    sla["applications"][0]["colour"] = "blue"
    found = {w["path"]: w["message"] for w in unknown_fields(sla, sla_schema())}
    assert found == {
        "applications[0].microservices[0].memroy": "unknown field, ignored; did you mean 'memory'?",
        "applications[0].microservices[0].model.objectiv": "unknown field, ignored; did you mean 'objective'?",
        "applications[0].colour": "unknown field, ignored",
    }


def test_non_objects_and_closed_objects_give_no_warning() -> None:
    assert unknown_fields([], sla_schema()) == []
    assert unknown_fields({"applications": "x"}, sla_schema()) == []
    sla = _example()
    sla["applications"][0]["microservices"][0]["model"]["privacy"] = {"nope": True}  # closed: the schema refuses it
    assert unknown_fields(copy.deepcopy(sla), sla_schema()) == []
