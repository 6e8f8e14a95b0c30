"""Validate SLA v2.0 descriptors and report every problem as ``{path, message}``.

The JSON Schema (``sla_v2.schema.json``) is the one definition of the SLA's shape; this module
runs it and adds the few rules a schema cannot state (duplicate names, exactly one of node/label,
a ``model`` block only on ``ml-model`` services, one ML constraint of each kind, unique model
input names and ``input``/``inputs`` agreeing: :mod:`.inputs`). The result is
what the root answers in a 400 body, so it must be readable by a person who only has the JSON in
front of them: paths look like ``applications[0].microservices[1].model.max_partitions`` and the
list is sorted, so the same document always yields the same list.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from functools import cache, lru_cache
from importlib import resources
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError

from treeline_common.cascade import CascadeError, CascadeSpec
from treeline_common.training import TRAINING_VIRTUALIZATION, TrainingError, TrainingSpec

from .inputs import declaration_problems
from .unknown_fields import PathPart, refused_in_definition
from .unknown_fields import dotted as format_path  # ``applications[0].model``; the document is ""

SCHEMA_FILE = "sla_v2.schema.json"
ML_VIRTUALIZATION = "ml-model"
# Constraint types that configure one value each; a second one would be ambiguous.
SINGLE_ML_CONSTRAINTS = ("e2e_latency", "energy", "battery", "privacy_pin", "boundary_compression")

Problem = dict[str, str]


@lru_cache(maxsize=1)
def sla_schema() -> dict[str, Any]:
    """The SLA v2.0 JSON Schema as shipped in the package (parsed once)."""
    text = resources.files(__package__).joinpath(SCHEMA_FILE).read_text(encoding="utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


@cache
def _validator(definition: str | None) -> Draft202012Validator:
    """A validator for the whole SLA, or for one ``$defs`` entry (e.g. ``microservice``)."""
    schema = sla_schema()
    if definition is not None:
        schema = {"$schema": schema["$schema"], "$defs": schema["$defs"], "$ref": f"#/$defs/{definition}"}
    return Draft202012Validator(schema)


def _show(value: Any) -> str:
    """A value as it appears in JSON (so the operator recognises it), shortened if long."""
    try:
        text = json.dumps(value, sort_keys=True)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


_JSON_TYPE_NAMES = ((bool, "boolean"), (int, "integer"), (float, "number"), (str, "string"),
                    (list, "array"), (tuple, "array"), (dict, "object"), (Mapping, "object"))


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    for py_type, name in _JSON_TYPE_NAMES:
        if isinstance(value, py_type):
            return name
    return type(value).__name__


def _describe(error: ValidationError) -> tuple[list[PathPart], str]:
    """Turn one jsonschema error into (path parts, human message)."""
    path: list[PathPart] = list(error.absolute_path)
    # jsonschema sets these on every error that iter_errors yields (Unset only on errors built by hand)
    kind: Any = error.validator
    expected: Any = error.validator_value
    got: Any = error.instance
    if kind == "required":
        missing = next((p for p in expected if error.message.startswith(repr(p))), None)
        if missing is None:  # pragma: no cover - jsonschema always names the property first
            return path, error.message
        return path + [missing], "is a required property"
    if kind == "type":
        names = expected if isinstance(expected, list) else [expected]
        return path, f"must be of type {' or '.join(names)}, got {_json_type(got)}"
    comparisons = {"minimum": ">=", "maximum": "<=", "exclusiveMinimum": ">", "exclusiveMaximum": "<"}
    if kind in comparisons:
        return path, f"must be {comparisons[kind]} {expected}, got {_show(got)}"
    if kind == "enum":
        return path, f"must be one of {', '.join(_show(v) for v in expected)}; got {_show(got)}"
    if kind == "const":
        return path, f"must be {_show(expected)}, got {_show(got)}"
    if kind == "pattern":
        hint = error.schema.get("x-hint") if isinstance(error.schema, Mapping) else None
        return path, (f"must be {hint}, got {_show(got)}" if hint
                      else f"must match {expected}, got {_show(got)}")
    if kind == "minLength":
        return path, "must not be empty" if expected == 1 else f"must have at least {expected} characters"
    if kind == "maxLength":
        if expected == 0:
            return path, f"must be empty (assigned by the system), got {_show(got)}"
        return path, f"must have at most {expected} characters"
    if kind == "minItems":
        return path, f"must have at least {expected} item{'s' if expected != 1 else ''}"
    if kind == "maxItems":
        return path, f"must have at most {expected} items"
    if kind == "uniqueItems":
        return path, f"must not contain duplicates, got {_show(got)}"
    return path, error.message


def _sort_key(item: tuple[list[PathPart], str]) -> tuple[tuple[tuple[int, int, str], ...], str]:
    """Order by path with numeric indices (so [2] sorts before [10]), then by message."""
    parts = tuple((1, p, "") if isinstance(p, int) else (0, 0, p) for p in item[0])
    return parts, item[1]


def _schema_problems(validator: Draft202012Validator, doc: Any) -> list[tuple[list[PathPart], str]]:
    """Schema errors, minus noise: when a value has the wrong type, its other complaints
    (enum, const, range) only repeat the same mistake, so only the type error is kept."""
    errors = list(validator.iter_errors(doc))
    wrong_type = {tuple(e.absolute_path) for e in errors if e.validator == "type"}
    return [_describe(e) for e in errors
            if e.validator in ("type", "required") or tuple(e.absolute_path) not in wrong_type]


def _finish(found: list[tuple[list[PathPart], str]]) -> list[Problem]:
    unique = {(tuple(path), msg): (path, msg) for path, msg in found}
    ordered = sorted(unique.values(), key=_sort_key)
    return [{"path": format_path(path), "message": msg} for path, msg in ordered]


# ---- semantic checks (the schema has already type-checked what they read; stay defensive) ----

def _selector_problems(value: Any, path: list[PathPart]) -> Iterator[tuple[list[PathPart], str]]:
    """A node selector (privacy pin, source, sink) names exactly one of ``node`` or ``label``."""
    if not isinstance(value, Mapping):
        return
    has_node, has_label = value.get("node") is not None, value.get("label") is not None
    if has_node and has_label:
        yield path, "needs exactly one of 'node' or 'label', got both"
    elif not has_node and not has_label:
        yield path, "needs exactly one of 'node' or 'label', got neither"


def _microservice_problems(ms: Any, path: list[PathPart]) -> Iterator[tuple[list[PathPart], str]]:
    if not isinstance(ms, Mapping):
        return
    model = ms.get("model")
    if "model" in ms and ms.get("virtualization") != ML_VIRTUALIZATION:
        yield path + ["model"], f"is only allowed when virtualization is '{ML_VIRTUALIZATION}'"
    yield from _training_problems(ms, path)
    if isinstance(model, Mapping):
        for parts, message in declaration_problems(model):
            yield path + ["model", *parts], message
        for end in ("source", "sink"):
            if end in model:
                yield from _selector_problems(model[end], path + ["model", end])
        yield from _cascade_problems(model, path + ["model"])
    constraints = ms.get("constraints")
    if not isinstance(constraints, list):
        return
    first_at: dict[str, int] = {}
    for index, constraint in enumerate(constraints):
        if not isinstance(constraint, Mapping):
            continue
        kind = constraint.get("type")
        if kind == "privacy_pin":
            yield from _selector_problems(constraint, path + ["constraints", index])
        if kind in SINGLE_ML_CONSTRAINTS:
            if kind in first_at:
                yield (path + ["constraints", index],
                       f"duplicate '{kind}' constraint (first at constraints[{first_at[kind]}])")
            else:
                first_at[kind] = index


def _training_problems(ms: Mapping[str, Any], path: list[PathPart]) -> Iterator[tuple[list[PathPart], str]]:
    """``training``: only on ``ml-training`` services; unknown keys anywhere inside it are errors
    (:func:`.unknown_fields.refused_fields`); its rules beyond the schema
    (:meth:`TrainingSpec.from_sla`), reported only when the schema found the block well typed."""
    if "training" in ms and ms.get("virtualization") != TRAINING_VIRTUALIZATION:
        yield path + ["training"], f"is only allowed when virtualization is '{TRAINING_VIRTUALIZATION}'"
        return
    block = ms.get("training")
    if not isinstance(block, Mapping) or not _validator("training").is_valid(block):
        return
    refused = refused_in_definition(block, sla_schema(), "training")  # a typo must not train on a default
    if refused:  # the rules below would only restate them (``is not a field of hierarchical``)
        yield from ((path + ["training", *parts], message) for parts, message in refused)
        return
    try:
        spec = TrainingSpec.from_sla(block)
    except TrainingError as exc:
        parts = [int(p) if p.isdigit() else p for p in exc.path.split(".") if p]
        yield path + ["training", *parts], exc.message
        return
    if spec.model_version.isdigit() and int(spec.model_version) < 1:  # versions count from 1
        yield path + ["training", "model"], f"version must be >= 1, got {_show(block.get('model'))}"


def _cascade_problems(model: Mapping[str, Any], path: list[PathPart]) -> Iterator[tuple[list[PathPart], str]]:
    """``model.cascade``: the rules the schema cannot state (:meth:`CascadeSpec.from_sla`)."""
    block = model.get("cascade")
    if not isinstance(block, Mapping):
        return
    if "edge" in block:
        yield from _selector_problems(block["edge"], path + ["cascade", "edge"])
    try:
        CascadeSpec.from_sla(model)
    except CascadeError as exc:
        yield path + [int(p) if p.isdigit() else p for p in exc.path.split(".")], exc.message


def _duplicate_names(items: Any, key: str, base: list[PathPart],
                     what: str) -> Iterator[tuple[list[PathPart], str]]:
    """Names (with namespace) must be unique among siblings; report every repeat after the first."""
    if not isinstance(items, list):
        return
    ns_key = key.replace("_name", "_namespace")
    seen: dict[tuple[Any, Any], int] = {}
    for index, item in enumerate(items):
        if not isinstance(item, Mapping) or not isinstance(item.get(key), str):
            continue
        namespace = item.get(ns_key)
        ident = (item.get(key), namespace if isinstance(namespace, str | None) else repr(namespace))
        if ident in seen:
            first = format_path(base[-1:] + [seen[ident]])
            yield base + [index, key], f"duplicate {what} name {_show(item[key])} (also at {first})"
        else:
            seen[ident] = index


def _semantic_problems(doc: Any) -> Iterator[tuple[list[PathPart], str]]:
    if not isinstance(doc, Mapping) or not isinstance(doc.get("applications"), list):
        return
    apps = doc["applications"]
    yield from _duplicate_names(apps, "application_name", ["applications"], "application")
    for a_index, app in enumerate(apps):
        if not isinstance(app, Mapping):
            continue
        services = app.get("microservices")
        base: list[PathPart] = ["applications", a_index, "microservices"]
        yield from _duplicate_names(services, "microservice_name", base, "microservice")
        if isinstance(services, list):
            for m_index, ms in enumerate(services):
                yield from _microservice_problems(ms, base + [m_index])


def validate_sla(doc: Any) -> list[Problem]:
    """Every problem in an SLA v2.0 document as ``[{"path", "message"}]``; ``[]`` means valid.

    Never raises for bad input (any JSON value, including a non-object, is answered with a list).
    """
    found = _schema_problems(_validator(None), doc)
    found.extend(_semantic_problems(doc))
    return _finish(found)


def validate_microservice(doc: Any) -> list[Problem]:
    """Problems in one SLA microservice object (as the root forwards it to a cluster).

    Paths are relative to the microservice (``model.max_partitions``).
    """
    found = _schema_problems(_validator("microservice"), doc)
    found.extend(_microservice_problems(doc, []))
    return _finish(found)
