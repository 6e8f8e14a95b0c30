"""What changed between two SLA documents, as ``[{path, old, new}]`` (pure).

Why its own module: ``POST /api/apply`` decides *whether* to touch a service from this diff
(empty = unchanged), and the operator reads the same list to see *what* it touched, so the
decision and its explanation cannot disagree.

Rules: mappings are compared key by key (a key absent on one side counts as ``None``, so
``{"a": null}`` and ``{}`` are equal); lists of equal length element by element (``[i]``),
lists of different lengths as one value; anything else by ``==``. The ids Oakestra writes
into a submitted SLA (``applicationID``, ``microserviceID``) are never compared: an SLA read
back from the root and applied again is unchanged. Paths join keys with ``.``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

IGNORED_KEYS = frozenset({"applicationID", "microserviceID"})

Change = dict[str, Any]


def join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def diff(old: Any, new: Any, path: str = "") -> list[Change]:
    """Every leaf that differs between ``old`` and ``new``, in ``new``'s key order, then the
    keys only ``old`` has."""
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        keys = [k for k in new if k not in IGNORED_KEYS]
        keys += [k for k in old if k not in new and k not in IGNORED_KEYS]
        changes: list[Change] = []
        for key in keys:
            changes += diff(old.get(key), new.get(key), join(path, str(key)))
        return changes
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        changes = []
        for index, (before, after) in enumerate(zip(old, new, strict=True)):
            changes += diff(before, after, f"{path}[{index}]")
        return changes
    if old == new and type(old) is type(new):
        return []
    if old == new and not isinstance(old, bool) and not isinstance(new, bool):
        return []  # 1 and 1.0: the same number in JSON
    return [{"path": path, "old": old, "new": new}]
