"""Why a service could not be scheduled, grouped: one line per distinct reason, with the nodes.

The scheduler gives a reason per node in the service's ``explanation`` (``filtered``:
``{node_id: {code, message}}``; ``filtered_or_unused``: ``{node_id: "code: message"}``) and the
whole text in ``status_detail`` (``unschedulable: *: <reason>; <node_id>: <code>: <message>; ...``,
where ``*`` means every node). The same reason often appears in both, and for many nodes;
an operator wants each reason once, with the names of the nodes it applies to. Pure.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

ALL = "*"
_CODE = re.compile(r"^[a-z][a-z0-9_]*: ")
_PREFIX = "unschedulable:"


def _message(text: str) -> str:
    """The reason without its leading ``code: `` (``battery: battery 80% ...`` -> ``battery 80% ...``)."""
    return _CODE.sub("", text.strip(), count=1).strip()


def _detail_pairs(detail: str, known: set[str]) -> tuple[list[tuple[str, str]], list[str]]:
    """(subject, message) pairs from a status detail, and the parts that name no node."""
    text = detail.strip()
    if text.startswith(_PREFIX):
        text = text[len(_PREFIX):]
    pairs: list[tuple[str, str]] = []
    other: list[str] = []
    for part in (p.strip() for p in text.split("; ")):
        if not part:
            continue
        subject, sep, rest = part.partition(": ")
        if sep and (subject == ALL or subject in known or subject.startswith("node-")):
            pairs.append((subject, _message(rest)))
        else:
            other.append(part)
    return pairs, other


def grouped_reasons(service: Mapping[str, Any],
                    node_names: Mapping[str, str] | None = None) -> list[tuple[str, list[str]]]:
    """``[(reason, [node names])]``, each distinct reason once, in the order first seen.

    A reason given for every node (``*``) lists ``all nodes``. Text in the detail that names no
    node comes back as a reason with no nodes.
    """
    explanation = service.get("explanation") or {}
    names = {**(node_names or {}), **(explanation.get("node_names") or {})}
    by_reason: dict[str, list[str]] = {}

    def add(subject: str, message: str) -> None:
        if not message:
            return
        subjects = by_reason.setdefault(message, [])
        if subject and subject not in subjects:
            subjects.append(subject)

    for node_id, entry in (explanation.get("filtered") or {}).items():
        if isinstance(entry, Mapping):
            add(str(node_id), _message(str(entry.get("message") or entry.get("code") or "")))
        else:
            add(str(node_id), _message(str(entry)))
    status = str(service.get("status") or "")
    if status == "FAILED":
        for node_id, text in (explanation.get("filtered_or_unused") or {}).items():
            add(str(node_id), _message(str(text)))
    pairs, other = _detail_pairs(str(service.get("status_detail") or ""), set(names))
    for subject, message in pairs:
        add(subject, message)
    for text in other:
        add("", text)
    result = []
    for message, subjects in by_reason.items():
        if ALL in subjects:
            result.append((message, ["all nodes"]))
        else:
            result.append((message, [names.get(s, s) for s in subjects]))
    return result


def reason_lines(service: Mapping[str, Any], node_names: Mapping[str, str] | None = None,
                 indent: str = "  ") -> list[str]:
    """``grouped_reasons`` as lines: ``<nodes>: <reason>``."""
    return [f"{indent}{', '.join(nodes)}: {message}" if nodes else f"{indent}{message}"
            for message, nodes in grouped_reasons(service, node_names)]
