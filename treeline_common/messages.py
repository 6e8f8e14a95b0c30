"""Payload schemas of every MQTT message between cluster and node engines.

Each payload is a frozen dataclass, encoded once here as JSON with a schema version
``v``. :func:`decode` raises :class:`PayloadError` for anything that does not parse or
carries the wrong version, so receivers can log and drop it (a bad payload is never
fatal). Adding an optional field keeps ``v``; changing or removing one bumps it.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, TypeVar

SCHEMA_VERSION = 1

T = TypeVar("T")


class PayloadError(ValueError):
    """A message payload that cannot be decoded into its schema."""


# ---------------------------------------------------------------- node -> cluster


@dataclass(frozen=True)
class NodeStatus:
    """Retained liveness on ``nodes/<id>/status``. The last will carries ``offline``.

    ``seq`` is the node's birth sequence number: it grows with every (re)connect, so the
    cluster can tell a stale retained ``offline`` from a newer birth.
    """

    node_id: str
    state: str  # "online" | "offline"
    seq: int = 0
    ts: float = 0.0


@dataclass(frozen=True)
class Battery:
    percent: float
    charging: bool = False


@dataclass(frozen=True)
class Accelerator:
    kind: str  # "gpu" | "tpu" | "npu"
    name: str
    memory_mb: int = 0
    emulated: bool = False


@dataclass(frozen=True)
class NodeTelemetry:
    """Periodic telemetry on ``nodes/<id>/information`` (default every 2 s).

    CPU and memory are psutil readings of the host; ``memory_limit_mb`` is the memory the
    node offers (an emulation profile may declare less than the host has).
    """

    node_id: str
    ts: float
    cpu_percent: float
    cpu_count: int
    memory_percent: float
    memory_total_mb: int
    memory_available_mb: int
    memory_limit_mb: int
    profile: str = "native"
    emulated: bool = False
    speed_factor: float = 1.0
    accelerators: list[Accelerator] = field(default_factory=list)
    battery: Battery | None = None
    stages: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class StageState:
    """A stage's state change on ``nodes/<id>/job``.

    ``state`` is one of :data:`STAGE_STATES`. ``generation`` echoes the deploy command so
    the cluster ignores reports about superseded plans.
    """

    node_id: str
    deployment_id: str
    stage: int
    state: str
    generation: int = 0
    reason: str = ""
    ts: float = 0.0
    load_ms: float = 0.0


STAGE_STATES = ("DOWNLOADING", "LOADING", "READY", "FAILED", "REMOVED")


@dataclass(frozen=True)
class StageStats:
    """Per-stage serving statistics on ``nodes/<id>/jobs/resources``."""

    node_id: str
    deployment_id: str
    stage: int
    requests: int
    compute_ms_mean: float
    ts: float = 0.0


# ---------------------------------------------------------------- cluster -> node


@dataclass(frozen=True)
class NextStage:
    """Where a stage sends its outputs: the next node's data endpoint and stage key."""

    node_id: str
    endpoint: str
    stage_key: str


@dataclass(frozen=True)
class DeployCommand:
    """``nodes/<id>/control/deploy``: load one partition and serve it.

    The node MUST download ``artifact_url``, verify its sha256 equals ``sha256`` (refusing
    it otherwise, with state FAILED), load it in onnxruntime and serve it under
    ``stage_key(deployment_id, stage)``. The last stage has ``next=None`` and replies to
    the caller; other stages forward their outputs to ``next``. Idempotent: a repeated
    command with the same key and sha256 only re-reports the state. A ``relay`` stage has no
    artifact (``artifact_url`` and ``sha256`` empty): it forwards its inputs as they are, which
    is how requests enter on the node where the data is when the first partition runs elsewhere.
    """

    deployment_id: str
    stage: int
    artifact_url: str
    sha256: str
    inputs: list[str]
    outputs: list[str]
    next: NextStage | None = None
    generation: int = 0
    relay: bool = False  # no model: pass ``inputs`` on unchanged (entry on the data's source node)


@dataclass(frozen=True)
class DeleteCommand:
    """``nodes/<id>/control/delete``: stop a stage, or all stages of a deployment when
    ``stage`` is None. Idempotent."""

    deployment_id: str
    stage: int | None = None


@dataclass(frozen=True)
class ProfileCommand:
    """``nodes/<id>/control/profile``: time every op of a model on this node.

    The node downloads ``artifact_url`` (checking ``sha256``), runs the whole model ``runs``
    times after ``warmup`` runs with onnxruntime's profiler on, and answers with a
    :class:`ProfileResult` carrying ``request_id``. Emulated nodes scale measured times by
    their speed factor (the same slowdown their stages get).
    """

    request_id: str
    artifact_url: str
    sha256: str
    runs: int = 20
    warmup: int = 3


@dataclass(frozen=True)
class ProfileResult:
    """``nodes/<id>/profile``: median ms per ONNX node name, for one model on one device class.

    ``op_ms`` is keyed by the ONNX node name; ``total_ms`` is the median end-to-end run time
    measured around ``session.run`` (the per-op times need not add up to it exactly).
    ``error`` is non-empty when profiling failed (then ``op_ms`` is empty).
    """

    node_id: str
    request_id: str
    sha256: str
    device_class: str
    op_ms: dict[str, float] = field(default_factory=dict)
    total_ms: float = 0.0
    runs: int = 0
    error: str = ""
    ts: float = 0.0


def stage_key(deployment_id: str, stage: int) -> str:
    """The data-plane address of one stage on a node: ``<deployment_id>/<stage>``."""
    return f"{deployment_id}/{stage}"


# ---------------------------------------------------------------- encoding


def encode(message: Any) -> bytes:
    """Encode a payload dataclass as JSON bytes, adding the schema version."""
    body = dataclasses.asdict(message)
    body["v"] = SCHEMA_VERSION
    return json.dumps(body, separators=(",", ":")).encode()


def decode(cls: type[T], payload: bytes | str) -> T:
    """Decode ``payload`` into ``cls``; raise :class:`PayloadError` if it does not fit."""
    try:
        body = json.loads(payload)
    except (ValueError, UnicodeDecodeError) as exc:
        raise PayloadError(f"{cls.__name__}: not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise PayloadError(f"{cls.__name__}: payload is not an object")
    version = body.pop("v", None)
    if version != SCHEMA_VERSION:
        raise PayloadError(f"{cls.__name__}: schema version {version!r}, expected {SCHEMA_VERSION}")
    return from_dict(cls, body)



def from_dict(cls: type[T], body: dict[str, Any]) -> T:
    """Build ``cls`` from a plain dict, recursing into the nested payload types above."""
    names = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    kwargs: dict[str, Any] = {}
    for key, value in body.items():
        if key not in names:
            continue  # tolerate fields added by newer senders
        kwargs[key] = _nested_value(cls, key, value)
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise PayloadError(f"{cls.__name__}: {exc}") from None


def _nested_value(cls: type, key: str, value: Any) -> Any:
    nested = _NESTED_FIELDS.get((cls.__name__, key))
    if nested is None or value is None:
        return value
    target, many = nested
    if many:
        if not isinstance(value, list):
            raise PayloadError(f"{cls.__name__}.{key}: expected a list")
        return [from_dict(target, item) if isinstance(item, dict) else item for item in value]
    if not isinstance(value, dict):
        raise PayloadError(f"{cls.__name__}.{key}: expected an object")
    return from_dict(target, value)


_NESTED_FIELDS: dict[tuple[str, str], tuple[type, bool]] = {
    ("NodeTelemetry", "accelerators"): (Accelerator, True),
    ("NodeTelemetry", "battery"): (Battery, False),
    ("DeployCommand", "next"): (NextStage, False),
}
