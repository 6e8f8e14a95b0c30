"""Fields of an SLA that the schema does not know: warnings, except inside strict blocks.

Oakestra's SLA objects are open (``additionalProperties`` is not false, so an Oakestra client's
extra fields pass), which also lets a typo pass silently: ``"memroy": 256`` leaves ``memory`` at
its default. :func:`unknown_fields` walks a descriptor along the schema
(``sla_v2.schema.json``: ``properties``, ``items`` and ``$ref`` to its definitions) and names every
key no schema object declares, with the closest known name when one is near
(:func:`difflib.get_close_matches`).

Blocks Treeline introduced itself have no Oakestra client to stay open for: inside a
definition named in :data:`STRICT_DEFINITIONS` (the ``training`` block, with its
``differential_privacy`` and ``hierarchical`` sub-blocks) an unknown key is an *error*
(:func:`refused_fields`, reported by :func:`deployment_descriptors.validation.validate_sla`), not a
warning: a misspelt ``local_epoch`` would otherwise train silently on the default
``local_epochs``. The known names are the schema's own ``properties``, read when called. Pure: no
I/O; the schema is passed in.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

# ``$defs`` entries whose objects (and every object below them) refuse unknown keys
STRICT_DEFINITIONS = frozenset({"training"})

PathPart = str | int


@dataclass(frozen=True)
class Unknown:
    """One key the schema does not declare: where (path parts from the document), the closest
    known name (``""`` when none is near), and whether it lies inside a strict block."""

    parts: tuple[PathPart, ...]
    near: str
    strict: bool

    def hint(self) -> str:
        return f"; did you mean {self.near!r}?" if self.near else ""


def dotted(parts: Sequence[PathPart]) -> str:
    """``("applications", 0, "memroy")`` -> ``"applications[0].memroy"`` (the root's notation)."""
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def find_unknown(doc: Any, schema: Mapping[str, Any]) -> list[Unknown]:
    """Every key of ``doc`` that its schema object does not declare, in document order."""
    found: list[Unknown] = []
    _walk(doc, schema, schema, (), False, found)
    return found


def unknown_fields(doc: Any, schema: Mapping[str, Any]) -> list[dict[str, str]]:
    """``[{path, message}]`` warnings for unknown keys outside strict blocks; paths in the root's
    notation (``applications[0].microservices[0].memroy``)."""
    return [{"path": dotted(u.parts), "message": f"unknown field, ignored{u.hint()}"}
            for u in find_unknown(doc, schema) if not u.strict]


def refused_fields(doc: Any, schema: Mapping[str, Any]) -> list[tuple[list[PathPart], str]]:
    """``(path parts, "unknown field; did you mean 'x'?")`` for unknown keys inside strict blocks
    (errors: the validator reports them with the schema's own problems)."""
    return [(list(u.parts), f"unknown field{u.hint()}") for u in find_unknown(doc, schema) if u.strict]


def refused_in_definition(doc: Any, schema: Mapping[str, Any],
                          definition: str) -> list[tuple[list[PathPart], str]]:
    """:func:`refused_fields` of ``doc`` read as the schema's ``$defs[definition]`` (paths relative to it)."""
    return refused_fields(doc, {"$defs": schema.get("$defs", {}), "$ref": f"#/$defs/{definition}"})


def _resolve(node: Mapping[str, Any], root: Mapping[str, Any],
             strict: bool) -> tuple[Mapping[str, Any], bool]:
    seen = 0
    while "$ref" in node and seen < 16:  # "#/definitions/x" or "#/$defs/x"
        ref = str(node["$ref"]).lstrip("#/").split("/")
        strict = strict or ref[-1] in STRICT_DEFINITIONS
        target: Any = root
        for part in ref:
            target = target.get(part, {}) if isinstance(target, Mapping) else {}
        node, seen = target, seen + 1
    return node, strict


def _walk(doc: Any, node: Mapping[str, Any], root: Mapping[str, Any], path: tuple[PathPart, ...],
          strict: bool, found: list[Unknown]) -> None:
    node, strict = _resolve(node, root, strict)
    if isinstance(doc, Mapping) and isinstance(node.get("properties"), Mapping):
        known: Mapping[str, Any] = node["properties"]
        for key, value in doc.items():
            child = (*path, str(key))
            if key in known:
                _walk(value, known[key], root, child, strict, found)
                continue
            if node.get("additionalProperties") is False:
                continue  # the schema refuses it already
            near = difflib.get_close_matches(str(key), list(known), n=1, cutoff=0.75)
            found.append(Unknown(child, near[0] if near else "", strict))
    elif isinstance(doc, list) and isinstance(node.get("items"), Mapping):
        for index, item in enumerate(doc):
            _walk(item, node["items"], root, (*path, index), strict, found)
