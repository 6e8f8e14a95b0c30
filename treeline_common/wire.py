"""Typed decoding of wire documents into frozen dataclasses, validated on the way in.

Every contract that crosses a process boundary (MQTT payloads in :mod:`messages`, the
root <-> cluster documents in :mod:`jobs`) is a frozen dataclass. :func:`from_dict` builds
one from a decoded JSON object and checks each field against its type hint:

- ``str``, ``bool``, ``int`` (a bool is not an int), ``float`` (ints accepted, NaN and
  +-Infinity refused), :class:`enum.Enum` subclasses (by value);
- ``X | None``, ``list[X]``, ``tuple[X, ...]``, ``dict[str, X]`` and nested dataclasses,
  recursively; ``Any`` (and ``dict[str, Any]``) is taken as it is;
- ranges declared on the field: ``field(metadata={"min": 0})`` / ``{"max": 100}``, and
  string patterns: ``{"pattern": regex, "pattern_message": "must be ..."}``.

Unknown keys are tolerated (a newer sender may add optional fields); a missing required
field, a wrong type or a value out of range raises :class:`WireError` whose ``details``
list names every offending field as ``{path, message}``. :func:`loads` parses JSON
refusing ``NaN``/``Infinity`` literals and turns *any* decoder failure (including
``RecursionError`` on deeply nested input) into :class:`WireError`.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import math
import re
import types
import typing
from collections.abc import Mapping
from functools import cache
from typing import Any, TypeVar

T = TypeVar("T")


class WireError(ValueError):
    """A document that does not fit its schema; ``details`` is a list of ``{path, message}``."""

    def __init__(self, message: str, details: list[dict[str, str]] | None = None) -> None:
        super().__init__(message)
        self.details = details or [{"path": "", "message": message}]


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


def loads(payload: bytes | str, what: str = "payload") -> Any:
    """Parse JSON; NaN/Infinity literals, bad UTF-8 and over-deep nesting raise WireError."""
    try:
        return json.loads(payload, parse_constant=_reject_constant)
    except Exception as exc:  # noqa: BLE001 - RecursionError, UnicodeDecodeError, ValueError, ...
        raise WireError(f"{what}: not valid JSON: {type(exc).__name__}: {str(exc)[:200]}") from None


@cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def from_dict(cls: type[T], body: Any, path: str = "") -> T:
    """Build dataclass ``cls`` from ``body``, validating every field (see module docstring)."""
    details: list[dict[str, str]] = []
    value = _build(cls, body, path, details)
    if details:
        first = details[0]
        where = first["path"] or cls.__name__
        more = f" (and {len(details) - 1} more)" if len(details) > 1 else ""
        raise WireError(f"{cls.__name__}: {where} {first['message']}{more}", details)
    return typing.cast(T, value)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _build(cls: type, body: Any, path: str, details: list[dict[str, str]]) -> Any:
    if not isinstance(body, Mapping):
        details.append({"path": path, "message": "must be an object"})
        return None
    hints = _hints(cls)
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name not in body:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                details.append({"path": _join(path, f.name), "message": "is required"})
            continue
        before = len(details)
        value = _convert(hints[f.name], body[f.name], _join(path, f.name), details)
        if len(details) == before:
            _check_range(f, value, _join(path, f.name), details)
            kwargs[f.name] = value
    if any(d["path"].startswith(path) for d in details):
        return None
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        details.append({"path": path, "message": str(exc)})
        return None


def _check_range(f: dataclasses.Field[Any], value: Any, path: str, details: list[dict[str, str]]) -> None:
    pattern = f.metadata.get("pattern")
    if pattern is not None and isinstance(value, str) and not re.fullmatch(pattern, value):
        details.append({"path": path, "message": f.metadata.get("pattern_message", f"must match {pattern}")})
        return
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return
    low, high = f.metadata.get("min"), f.metadata.get("max")
    if low is not None and value < low:
        details.append({"path": path, "message": f"must be >= {low}"})
    elif high is not None and value > high:
        details.append({"path": path, "message": f"must be <= {high}"})


def _convert(hint: Any, value: Any, path: str, details: list[dict[str, str]]) -> Any:
    """``value`` checked (and nested dataclasses/tuples built) against ``hint``."""
    if hint is Any:
        return value
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = tuple(a for a in typing.get_args(hint) if a is not type(None))
        if value is None:
            if len(args) < len(typing.get_args(hint)):
                return None
            details.append({"path": path, "message": "must not be null"})
            return None
        if len(args) == 1:
            return _convert(args[0], value, path, details)
        for arg in args:  # first alternative that fits
            trial: list[dict[str, str]] = []
            converted = _convert(arg, value, path, trial)
            if not trial:
                return converted
        details.append({"path": path, "message": f"must be {' or '.join(_name(a) for a in args)}"})
        return None
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            details.append({"path": path, "message": "must be a list"})
            return None
        args = typing.get_args(hint)
        item = args[0] if args else Any
        items = [_convert(item, v, f"{path}[{i}]", details) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, Mapping):
            details.append({"path": path, "message": "must be an object"})
            return None
        args = typing.get_args(hint)
        item = args[1] if len(args) == 2 else Any
        return {str(k): _convert(item, v, _join(path, str(k)), details) for k, v in value.items()}
    if hint is None or hint is type(None):
        if value is not None:
            details.append({"path": path, "message": "must be null"})
        return None
    if isinstance(hint, type):
        return _convert_type(hint, value, path, details)
    return value


def _convert_type(hint: type, value: Any, path: str, details: list[dict[str, str]]) -> Any:
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, path, details)
    if issubclass(hint, enum.Enum):
        try:
            return hint(value)
        except ValueError:
            allowed = ", ".join(str(m.value) for m in hint)
            details.append({"path": path, "message": f"must be one of {allowed} (got {str(value)[:40]!r})"})
            return None
    if hint is bool:
        if not isinstance(value, bool):
            details.append({"path": path, "message": "must be a boolean"})
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            details.append({"path": path, "message": "must be an integer"})
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            details.append({"path": path, "message": "must be a number"})
            return None
        if not math.isfinite(value):
            details.append({"path": path, "message": "must be a finite number"})
            return None
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            details.append({"path": path, "message": "must be a string"})
        return value
    if hint is dict:
        if not isinstance(value, Mapping):
            details.append({"path": path, "message": "must be an object"})
        return value
    if hint is list:
        if not isinstance(value, list):
            details.append({"path": path, "message": "must be a list"})
        return value
    return value


def _name(hint: Any) -> str:
    return getattr(hint, "__name__", str(hint))


def to_dict(message: Any) -> dict[str, Any]:
    """A dataclass as a JSON-able dict (enums by value, tuples as lists)."""
    return typing.cast(dict[str, Any], _plain(dataclasses.asdict(message)))


def _plain(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def json_schema(cls: type, refs: dict[str, Any] | None = None,
                prefix: str = "#/components/schemas/") -> dict[str, Any]:
    """The JSON Schema (2020-12, as OpenAPI 3.1 uses it) of dataclass ``cls``: the same type hints and
    field ranges :func:`from_dict` validates with, so a published schema cannot drift from the check.

    Nested dataclasses become ``$ref``s to ``prefix + <class name>``; their schemas are added to
    ``refs`` (pass a dict to collect them). Unknown keys stay allowed, as the decoder tolerates them.
    """
    collected = refs if refs is not None else {}
    hints = _hints(cls)
    properties: dict[str, Any] = {}
    required: list[str] = []
    for f in dataclasses.fields(cls):
        schema = _hint_schema(hints[f.name], collected, prefix)
        for key, word in (("min", "minimum"), ("max", "maximum")):
            if key in f.metadata:
                schema[word] = f.metadata[key]
        if "pattern" in f.metadata:
            schema["pattern"] = f"^{f.metadata['pattern']}$"
        properties[f.name] = schema
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            required.append(f.name)
    doc: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        doc["required"] = required
    if cls.__doc__:
        doc["description"] = cls.__doc__.strip().splitlines()[0]
    return doc


def _hint_schema(hint: Any, refs: dict[str, Any], prefix: str) -> dict[str, Any]:
    if hint is Any:
        return {}
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = [_hint_schema(a, refs, prefix) for a in typing.get_args(hint)]
        return {"anyOf": options}
    if origin in (list, tuple):
        items = [a for a in typing.get_args(hint) if a is not Ellipsis]
        return {"type": "array", "items": _hint_schema(items[0], refs, prefix) if items else {}}
    if origin is dict:
        pair = typing.get_args(hint)
        return {"type": "object",
                "additionalProperties": _hint_schema(pair[1], refs, prefix) if len(pair) == 2 else {}}
    if hint is None or hint is type(None):
        return {"type": "null"}
    if isinstance(hint, type):
        if dataclasses.is_dataclass(hint):
            if hint.__name__ not in refs:
                refs[hint.__name__] = {}  # placeholder against recursion
                refs[hint.__name__] = json_schema(hint, refs, prefix)
            return {"$ref": prefix + hint.__name__}
        if issubclass(hint, enum.Enum):
            return {"type": "string", "enum": [m.value for m in hint]}
        simple = {bool: "boolean", int: "integer", float: "number", str: "string", dict: "object",
                  list: "array"}
        if hint in simple:
            return {"type": simple[hint]}
    return {}
