"""The model registry's REST contracts, written once: the version update (``PATCH``), the alias move
and the partition record, each a frozen dataclass decoded and validated through :mod:`.wire`.

``PATCH /api/models/<name>/versions/<ref>`` takes a :class:`VersionUpdate` (every field optional;
omitted or null leaves it as it is):

- ``description``: str (at most :data:`MAX_DESCRIPTION` characters);
- ``tags``: ``{key: value}`` merged into the version's tags; a null value deletes that tag;
- ``lineage``: :class:`Lineage`, set ONCE (a second one is 409); its parent must exist and must not
  descend from this version;
- ``metrics``: ``{key: {field: number | string}}`` merged by key (a key's object replaces the stored
  one; null deletes the key). Keys: ``quality`` (``accuracy``, ``agreement``, ``dataset``...),
  ``latency/<device_class>`` (``p50_ms``, ``energy_mj``...) or another name; numbers finite,
  strings at most :data:`MAX_VALUE` characters, ``*_ms``, ``*_mj`` and ``*_bytes`` numbers >= 0.

Every bad field is an :class:`~treeline_common.errors.InvalidInput` whose details name its path
(``metrics.latency/server.p50_ms``), all of them, never only the first. The optimisation pipeline
writes its results through this contract; keep names and shapes stable.

``PUT /api/models/<name>/versions/<ref>/partitions/<sha256>`` takes a :class:`PartitionRecord` (a
cluster says which partition of the version one of its deployments runs).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, TypeVar

from treeline_common import wire
from treeline_common.errors import InvalidInput

NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}"  # a model name (root_orchestrator.stores.base)
KEY_PATTERN = r"[A-Za-z0-9_][A-Za-z0-9_.:/-]{0,127}"  # a tag key
METRIC_KEY_PATTERN = r"[A-Za-z0-9_][A-Za-z0-9_.:-]{0,63}(/[A-Za-z0-9][A-Za-z0-9_.:-]{0,63})?"
FIELD_PATTERN = r"[A-Za-z_][A-Za-z0-9_.-]{0,63}"  # a field inside one metric
MAX_DESCRIPTION = 5000
MAX_VALUE = 256  # characters of a tag value, a metric string, a data set or tool version
MAX_ENTRIES = 64  # tags in one update, metric keys, fields per metric, tools
MAX_PARAMETERS_JSON = 16 * 1024
NON_NEGATIVE_SUFFIXES = ("_ms", "_mj", "_bytes")
FIELDS = ("description", "tags", "lineage", "metrics")
T = TypeVar("T")


@dataclass(frozen=True)
class ParentRef:
    """The version a derived version was made from."""

    name: str = field(metadata={"pattern": NAME_PATTERN, "pattern_message": "must be a model name"})
    version: int = field(metadata={"min": 1})


@dataclass(frozen=True)
class Lineage:
    """How a version was derived: ``operation`` (quantize, prune, distill...) of ``parent`` with
    ``parameters`` on ``dataset``, by ``tools`` (``{package: version}``)."""

    parent: ParentRef
    operation: str = field(metadata={"pattern": r"[A-Za-z0-9][A-Za-z0-9_.:/-]{0,63}",
                                     "pattern_message": "must be a short name (letters, digits, _.:/-)"})
    parameters: dict[str, Any] = field(default_factory=dict)
    dataset: str = ""
    tools: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"parent": {"name": self.parent.name, "version": self.parent.version},
                "operation": self.operation, "parameters": dict(self.parameters), "dataset": self.dataset,
                "tools": dict(self.tools)}


MetricValue = int | float | str


@dataclass(frozen=True)
class VersionUpdate:
    """What a ``PATCH`` changes; None: unchanged."""

    description: str | None = None
    tags: dict[str, str | None] | None = None
    lineage: Lineage | None = None
    metrics: dict[str, dict[str, MetricValue] | None] | None = None

    @property
    def empty(self) -> bool:
        return all(getattr(self, name) is None for name in FIELDS)

    @classmethod
    def from_body(cls, body: Any) -> VersionUpdate:
        """Decode and validate a PATCH body; InvalidInput naming every bad field."""
        details: list[dict[str, str]] = []
        if isinstance(body, dict):
            details += [{"path": str(k), "message": f"unknown field (known: {', '.join(FIELDS)})"}
                        for k in body if k not in FIELDS]
        try:
            update = wire.from_dict(cls, body)
        except wire.WireError as exc:
            raise InvalidInput(f"invalid version update: {exc}", details + list(exc.details)) from None
        details += update.problems()
        if details:
            first = details[0]
            raise InvalidInput(f"invalid version update: {first['path']} {first['message']}", details)
        return update

    def problems(self) -> list[dict[str, str]]:
        """What the types alone do not catch: key names, lengths, counts, signs."""
        found: list[dict[str, str]] = []
        if self.description is not None and len(self.description) > MAX_DESCRIPTION:
            found.append({"path": "description", "message": f"longer than {MAX_DESCRIPTION} characters"})
        if self.tags is not None:
            found += _entries("tags", self.tags, KEY_PATTERN)
            found += [{"path": f"tags.{k}", "message": f"longer than {MAX_VALUE} characters"}
                      for k, v in self.tags.items() if v is not None and len(v) > MAX_VALUE]
        if self.lineage is not None:
            found += _lineage_problems(self.lineage)
        if self.metrics is not None:
            found += _entries("metrics", self.metrics, METRIC_KEY_PATTERN)
            for key, metric in self.metrics.items():
                if metric is not None:
                    found += _metric_problems(f"metrics.{key}", metric)
        return found

    def to_body(self) -> dict[str, Any]:
        """The JSON body (only the fields set)."""
        body: dict[str, Any] = {}
        if self.description is not None:
            body["description"] = self.description
        if self.tags is not None:
            body["tags"] = dict(self.tags)
        if self.lineage is not None:
            body["lineage"] = self.lineage.to_dict()
        if self.metrics is not None:
            body["metrics"] = {k: (dict(v) if v is not None else None) for k, v in self.metrics.items()}
        return body


def _decode(cls: type[T], body: Any, what: str) -> T:
    """``cls`` from a JSON body, or InvalidInput naming every bad field."""
    try:
        return wire.from_dict(cls, body)
    except wire.WireError as exc:
        raise InvalidInput(f"invalid {what}: {exc}", list(exc.details)) from None


def _entries(path: str, entries: dict[str, Any], pattern: str) -> list[dict[str, str]]:
    found = [{"path": f"{path}.{k}", "message": f"key must match {pattern}"}
             for k in entries if not re.fullmatch(pattern, k)]
    if len(entries) > MAX_ENTRIES:
        found.append({"path": path, "message": f"more than {MAX_ENTRIES} entries"})
    return found


def _metric_problems(path: str, metric: dict[str, MetricValue]) -> list[dict[str, str]]:
    found = _entries(path, metric, FIELD_PATTERN)
    for name, value in metric.items():
        if isinstance(value, str) and name.endswith(NON_NEGATIVE_SUFFIXES):
            found.append({"path": f"{path}.{name}", "message": "must be a number"})
        elif isinstance(value, str) and len(value) > MAX_VALUE:
            found.append({"path": f"{path}.{name}", "message": f"longer than {MAX_VALUE} characters"})
        elif not isinstance(value, str) and name.endswith(NON_NEGATIVE_SUFFIXES) and value < 0:
            found.append({"path": f"{path}.{name}", "message": "must be >= 0"})
    return found


def _lineage_problems(lineage: Lineage) -> list[dict[str, str]]:
    found: list[dict[str, str]] = []
    if len(lineage.dataset) > MAX_VALUE:
        found.append({"path": "lineage.dataset", "message": f"longer than {MAX_VALUE} characters"})
    found += _entries("lineage.tools", lineage.tools, r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
    found += [{"path": f"lineage.tools.{k}", "message": f"longer than {MAX_VALUE} characters"}
              for k, v in lineage.tools.items() if len(v) > MAX_VALUE]
    try:
        text = json.dumps(lineage.parameters, allow_nan=False)
    except (TypeError, ValueError):
        found.append({"path": "lineage.parameters", "message": "numbers must be finite"})
    else:
        if len(text) > MAX_PARAMETERS_JSON:
            found.append({"path": "lineage.parameters",
                          "message": f"over {MAX_PARAMETERS_JSON} bytes as JSON"})
    return found


@dataclass(frozen=True)
class AliasMove:
    """``PUT /api/models/<name>/aliases/<alias>``: point the alias at ``version``; with ``expected``
    only if the alias points at that version now (null: only if the alias does not exist). An
    omitted ``expected`` moves it unconditionally."""

    version: int = field(metadata={"min": 1})
    expected: int | None = None
    conditional: bool = False  # whether the body had ``expected`` (null included)

    @classmethod
    def from_body(cls, body: Any) -> AliasMove:
        move = _decode(cls, body, "alias move")
        if move.expected is not None and move.expected < 1:
            raise InvalidInput("invalid alias move",
                               [{"path": "expected", "message": "must be >= 1 or null"}])
        return cls(move.version, move.expected, conditional="expected" in body)


@dataclass(frozen=True)
class PartitionRecord:
    """One partition (stage) of a version, as a cluster deployed it: ``ops`` is the half-open range
    ``[start, end)`` of the model's ops it holds (when the planner said), ``flops`` and the bytes of
    its weights and of the tensors it sends on (0 for the last stage)."""

    deployment_id: str = field(metadata={"pattern": r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}",
                                         "pattern_message": "must be a deployment id"})
    stage: int = field(metadata={"min": 0})
    flops: int = field(default=0, metadata={"min": 0})
    param_bytes: int = field(default=0, metadata={"min": 0})
    cut_bytes: int = field(default=0, metadata={"min": 0})
    ops: tuple[int, ...] | None = None

    @classmethod
    def from_body(cls, body: Any) -> PartitionRecord:
        record = _decode(cls, body, "partition record")
        ops = record.ops
        if ops is not None and (len(ops) != 2 or ops[0] < 0 or ops[1] <= ops[0]):
            raise InvalidInput("invalid partition record", [
                {"path": "ops", "message": "must be [start, end] with 0 <= start < end"}])
        return record

    def to_dict(self) -> dict[str, Any]:
        return {"deployment_id": self.deployment_id, "stage": self.stage,
                "ops": list(self.ops) if self.ops is not None else None, "flops": self.flops,
                "param_bytes": self.param_bytes, "cut_bytes": self.cut_bytes}
