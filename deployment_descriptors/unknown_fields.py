"""Fields of an SLA that the schema does not know: warnings, not errors.

Oakestra's SLA objects are open (``additionalProperties`` is not false, so an Oakestra client's
extra fields pass), which also lets a typo pass silently: ``"memroy": 256`` leaves ``memory`` at
its default. :func:`unknown_fields` walks a descriptor along the schema
(``sla_v2.schema.json``: ``properties``, ``items`` and ``$ref`` to its definitions) and names every
key no schema object declares, with the closest known name when one is near
(:func:`difflib.get_close_matches`). Pure: no I/O; the schema is passed in.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any


def unknown_fields(doc: Any, schema: Mapping[str, Any]) -> list[dict[str, str]]:
    """``[{path, message}]`` for every key of ``doc`` that its schema object does not declare;
    paths in the root's notation (``applications[0].microservices[0].memroy``)."""
    found: list[dict[str, str]] = []
    _walk(doc, schema, schema, "", found)
    return found


def _resolve(node: Mapping[str, Any], root: Mapping[str, Any]) -> Mapping[str, Any]:
    seen = 0
    while "$ref" in node and seen < 16:  # "#/definitions/x" or "#/$defs/x"
        target: Any = root
        for part in str(node["$ref"]).lstrip("#/").split("/"):
            target = target.get(part, {}) if isinstance(target, Mapping) else {}
        node, seen = target, seen + 1
    return node


def _walk(doc: Any, node: Mapping[str, Any], root: Mapping[str, Any], path: str,
          found: list[dict[str, str]]) -> None:
    node = _resolve(node, root)
    if isinstance(doc, Mapping) and isinstance(node.get("properties"), Mapping):
        known: Mapping[str, Any] = node["properties"]
        for key, value in doc.items():
            child = f"{path}.{key}" if path else str(key)
            if key in known:
                _walk(value, known[key], root, child, found)
                continue
            if node.get("additionalProperties") is False:
                continue  # the schema refuses it already: an error, not a warning
            near = difflib.get_close_matches(str(key), list(known), n=1, cutoff=0.75)
            hint = f"; did you mean {near[0]!r}?" if near else ""
            found.append({"path": child, "message": f"unknown field, ignored{hint}"})
    elif isinstance(doc, list) and isinstance(node.get("items"), Mapping):
        for index, item in enumerate(doc):
            _walk(item, node["items"], root, f"{path}[{index}]", found)
