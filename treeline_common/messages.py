"""Payload schemas of every MQTT message between cluster and node engines.

Each payload is a frozen dataclass, encoded once here as JSON with a schema version
``v``. :func:`decode` raises :class:`PayloadError` for anything that does not parse or
carries the wrong version, so receivers can log and drop it (a bad payload is never
fatal). Adding an optional field keeps ``v``; changing or removing one bumps it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, TypeVar

from treeline_common import wire

SCHEMA_VERSION = 1

T = TypeVar("T")

_PCT = {"min": 0.0, "max": 100.0}
_NONNEG = {"min": 0}


class PayloadError(wire.WireError):
    """A message payload that cannot be decoded into its schema (types, ranges, version)."""


# ---------------------------------------------------------------- node -> cluster


@dataclass(frozen=True)
class NodeStatus:
    """Retained liveness on ``nodes/<id>/status``. The last will carries ``offline``.

    ``seq`` is the node's birth sequence number: it grows with every (re)connect, so the
    cluster can tell a stale retained ``offline`` from a newer birth.
    """

    node_id: str
    state: str  # "online" | "offline"
    seq: int = field(default=0, metadata=_NONNEG)
    ts: float = 0.0

    def __post_init__(self) -> None:
        if self.state not in ("online", "offline"):
            raise ValueError(f"state must be 'online' or 'offline', not {self.state!r}")


@dataclass(frozen=True)
class Battery:
    """A battery's charge. ``plugged``: on mains power (None: unknown); ``emulated``: declared by an
    emulation profile, not read from the device."""

    percent: float = field(metadata=_PCT)
    charging: bool = False
    plugged: bool | None = None
    emulated: bool = False


@dataclass(frozen=True)
class Accelerator:
    kind: str  # "gpu" | "tpu" | "npu"
    name: str
    memory_mb: int = field(default=0, metadata=_NONNEG)
    emulated: bool = False


_LINK_SOURCE = {"pattern": r"^(probe|passive)$", "pattern_message": "must be 'probe' or 'passive'"}


@dataclass(frozen=True)
class LinkReading:
    """A measured link from the reporting node to ``peer`` (node engine, :mod:`node_engine.links`).

    ``rtt_ms``: round trip of a tiny message (ms); ``mbps``: throughput of the sender's
    uplink towards ``peer`` (Mbit/s); ``samples``: how many measurements the figures rest on;
    ``measured_at``: wall-clock seconds of the latest one; ``source``: ``probe`` (active
    probe on the data plane) or ``passive`` (real forwarded tensors).
    """

    peer: str
    rtt_ms: float = field(metadata=_NONNEG)
    mbps: float = field(metadata={"min": 1e-9})
    samples: int = field(default=1, metadata={"min": 1})
    measured_at: float = field(default=0.0, metadata=_NONNEG)
    source: str = field(default="probe", metadata=_LINK_SOURCE)


@dataclass(frozen=True)
class DiskReading:
    """Usage of the filesystem holding ``path`` (MB, %) and the host's block IO rates (bytes/s;
    None on the first sample or where the kernel exposes no IO counters)."""

    path: str
    total_mb: int = field(metadata=_NONNEG)
    used_mb: int = field(metadata=_NONNEG)
    percent: float = field(metadata=_PCT)
    read_bytes_per_s: float | None = field(default=None, metadata=_NONNEG)
    write_bytes_per_s: float | None = field(default=None, metadata=_NONNEG)


@dataclass(frozen=True)
class NetworkReading:
    """Receive/transmit rates (bytes/s) summed over ``interfaces`` (loopback excluded); None on the
    first sample, which has no earlier counters to compare with."""

    rx_bytes_per_s: float | None = field(default=None, metadata=_NONNEG)
    tx_bytes_per_s: float | None = field(default=None, metadata=_NONNEG)
    interfaces: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class GpuReading:
    """One GPU. ``vendor``: ``nvidia`` (NVML) or ``nvidia-tegra`` (a Jetson's integrated GPU, sysfs).
    A figure the device does not report is None (never 0): MB, degrees Celsius, watts, percent."""

    index: int = field(metadata=_NONNEG)
    name: str
    vendor: str
    utilization_percent: float | None = field(default=None, metadata=_PCT)
    memory_used_mb: int | None = field(default=None, metadata=_NONNEG)
    memory_total_mb: int | None = field(default=None, metadata=_NONNEG)
    temperature_c: float | None = None
    power_w: float | None = field(default=None, metadata=_NONNEG)


_POWER_SOURCE = {"pattern": r"rapl|ina3221|profile",
                 "pattern_message": "must be 'rapl', 'ina3221' or 'profile'"}


@dataclass(frozen=True)
class PowerReading:
    """The device's power draw in watts. ``source``: ``rapl`` (CPU package energy counters),
    ``ina3221`` (a Jetson's input rail) or ``profile`` (declared ``power_w`` times CPU load:
    ``estimated`` is then True)."""

    watts: float = field(metadata=_NONNEG)
    source: str = field(metadata=_POWER_SOURCE)
    estimated: bool = False


@dataclass(frozen=True)
class NodeTelemetry:
    """Periodic telemetry on ``nodes/<id>/information`` (default every 2 s).

    CPU and memory are psutil readings of the host; ``memory_limit_mb`` is the memory the
    node offers (an emulation profile may declare less than the host has). ``seq`` is the
    birth sequence number of the MQTT session that sent it (see :class:`NodeStatus`): the
    cluster lets telemetry of a newer birth override an ``offline`` it holds, so a retained
    ``offline`` published by somebody else cannot pin a live node offline. ``stages`` lists
    the stage keys (:func:`stage_key`) the node serves right now: the observed state the
    cluster's reconcile loop compares with its desired placements.
    """

    node_id: str
    ts: float
    cpu_percent: float = field(metadata=_PCT)
    cpu_count: int = field(metadata={"min": 1})
    memory_percent: float = field(metadata=_PCT)
    memory_total_mb: int = field(metadata=_NONNEG)
    memory_available_mb: int = field(metadata=_NONNEG)
    memory_limit_mb: int = field(metadata=_NONNEG)
    profile: str = "native"
    emulated: bool = False
    speed_factor: float = field(default=1.0, metadata={"min": 1e-6})
    accelerators: list[Accelerator] = field(default_factory=list)
    battery: Battery | None = None
    stages: list[str] = field(default_factory=list)
    seq: int = field(default=0, metadata=_NONNEG)
    links: list[LinkReading] | None = None  # measured links to peers; None: this node measures none
    # Device readings from node_engine.sources (all optional; schema version kept). A reading
    # whose source is absent on the device is null / empty, never zero: ``sources`` says which.
    cpu_per_core: list[float] = field(default_factory=list)
    disk: DiskReading | None = None
    network: NetworkReading | None = None
    temperatures_c: dict[str, float] | None = None
    gpus: list[GpuReading] = field(default_factory=list)
    power: PowerReading | None = None
    sources: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for i, pct in enumerate(self.cpu_per_core):
            if not 0.0 <= pct <= 100.0:
                raise ValueError(f"cpu_per_core[{i}] must be within 0..100, not {pct!r}")
        for name, state in self.sources.items():
            if state not in SOURCE_STATES and not state.startswith("error: "):
                raise ValueError(f"sources.{name} must be one of {', '.join(SOURCE_STATES)} "
                                 f"or 'error: <reason>', not {state[:40]!r}")


SOURCE_STATES = ("ok", "absent", "emulated")
"""States of a telemetry source in ``NodeTelemetry.sources`` (besides ``error: <reason>``): ``ok``
read this sample; ``absent`` not on this device; ``emulated`` replaced by the emulation profile."""


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
    load_ms: float = field(default=0.0, metadata=_NONNEG)

    def __post_init__(self) -> None:
        if self.state not in STAGE_STATES:
            raise ValueError(f"state must be one of {', '.join(STAGE_STATES)}, not {self.state!r}")


STAGE_STATES = ("DOWNLOADING", "LOADING", "READY", "FAILED", "REMOVED")


@dataclass(frozen=True)
class StageStats:
    """Per-stage serving statistics on ``nodes/<id>/jobs/resources``: requests served and their
    mean compute ms since the stage started; at a service's entry also the requests it answered
    and their mean end-to-end ms (arrival at the entry to the answer leaving it; 0 elsewhere)."""

    node_id: str
    deployment_id: str
    stage: int
    requests: int = field(metadata=_NONNEG)
    compute_ms_mean: float = field(metadata=_NONNEG)
    ts: float = 0.0
    generation: int = 0
    e2e_requests: int = field(default=0, metadata=_NONNEG)
    e2e_ms_mean: float = field(default=0.0, metadata=_NONNEG)


# ---------------------------------------------------------------- cluster -> node


_HEX_KEY = {"pattern": "([0-9a-f]{64})?",
            "pattern_message": "must be 64 lowercase hex digits (32 bytes) or empty"}
_CURVE_KEY = {"pattern": "([0-9a-zA-Z.:+=^!/*?&<>()\\[\\]{}@%$#-]{40})?",
              "pattern_message": "must be a 40-character Z85 CURVE public key or empty"}
_COMPRESSION = {"pattern": "(fp16|int8)?", "pattern_message": "must be 'fp16', 'int8' or empty"}


@dataclass(frozen=True)
class NextStage:
    """Where a stage sends its outputs: the next node's data endpoint and stage key.

    With ``curve_server_key`` (the next node's Z85 CURVE public key) ``endpoint`` is that
    node's CURVE endpoint and the forward travels encrypted; empty: plain TCP. ``compression``
    (``fp16`` | ``int8``; empty: none) is the codec the stage's float32 outputs travel in
    (:mod:`treeline_common.tensor_codec`); the cluster sets it only on a route to another node.
    """

    node_id: str
    endpoint: str
    stage_key: str
    curve_server_key: str = field(default="", metadata=_CURVE_KEY)
    compression: str = field(default="", metadata=_COMPRESSION)


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

    Security (docs/contracts.md, "Data-plane security"): with ``data_key`` the stage signs
    what it forwards with it and refuses requests that are not signed with it, except at the
    ``entry``, which also takes requests signed with ``caller_key`` and, when that is empty,
    unsigned requests. ``data_key`` and ``caller_key`` are secrets (left out of ``repr``).
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
    # Data-plane security (node_engine.data_plane.security; all empty/False: open, as before):
    data_key: str = field(default="", repr=False, metadata=_HEX_KEY)  # the generation's secret
    entry: bool = False  # callers send here (the relay, else stage 0)
    caller_key: str = field(default="", repr=False, metadata=_HEX_KEY)  # entry only: callers sign with it
    encrypt_tensors: bool = False  # inner stages take requests over CURVE only (SLA privacy.encrypt_tensors)
    # Canary rollout (cluster_orchestrator.rollout; "": none): a relay with ``divert_from`` takes
    # ``divert_share`` of the requests addressed to that stage key (the serving entry, same node)
    # and hands them on to its ``next`` (the new version's entry) instead.
    divert_from: str = ""
    divert_share: float = field(default=0.0, metadata={"min": 0.0, "max": 1.0})
    # Confidence cascade (treeline_common.cascade; None: none): the last stage of a small model
    # answers when its confidence is at least ``cascade_threshold`` and otherwise forwards its
    # ORIGINAL inputs to ``escalate_to`` (the large model's entry), awaiting that answer.
    escalate_to: NextStage | None = None
    cascade_threshold: float = field(default=0.0, metadata={"min": 0.0, "max": 1.0})
    cascade_confidence: str = field(default="", metadata={
        "pattern": "(softmax_top1|output:[A-Za-z0-9_.:/-]{1,128})?",
        "pattern_message": "must be 'softmax_top1', 'output:<name>' or empty"})

    def __post_init__(self) -> None:
        if self.escalate_to is not None and (self.relay or self.next is not None):
            raise ValueError("escalate_to: only a model's last stage (no next, not a relay) may escalate")
        if not self.divert_from:
            return
        if not self.relay:
            raise ValueError("divert_from: only a relay stage may divert requests")
        try:
            diverted, _, _ = parse_stage_key(self.divert_from)
        except ValueError:
            raise ValueError(f"divert_from: not a stage key: {self.divert_from[:80]!r}") from None
        if diverted != self.deployment_id:
            raise ValueError("divert_from: must name a stage of the same deployment")


@dataclass(frozen=True)
class DeleteCommand:
    """``nodes/<id>/control/delete``: stop stages of a deployment. Idempotent.

    ``generation`` None and ``stage`` None: every stage of the deployment; ``generation``
    set: only that generation's stages (``stage`` narrows it to one). ``stage`` set without
    ``generation``: that stage index in every generation. Make-before-break relies on
    deleting one generation while the next one serves.
    """

    deployment_id: str
    stage: int | None = None
    generation: int | None = None


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


def stage_key(deployment_id: str, stage: int, generation: int = 0) -> str:
    """The data-plane address of one stage on a node: ``<deployment_id>/<generation>/<stage>``.

    The generation is part of the key so two plans of one deployment can be served side by
    side on a node while traffic moves from the old to the new (make-before-break).
    """
    return f"{deployment_id}/{generation}/{stage}"


def parse_stage_key(key: str) -> tuple[str, int, int]:
    """``(deployment_id, generation, stage)`` of a :func:`stage_key`; ValueError otherwise."""
    deployment_id, generation, stage = key.rsplit("/", 2)
    if not deployment_id:
        raise ValueError(f"not a stage key: {key!r}")
    return deployment_id, int(generation), int(stage)


# ---------------------------------------------------------------- encoding


def encode(message: Any) -> bytes:
    """Encode a payload dataclass as JSON bytes, adding the schema version."""
    body = wire.to_dict(message)
    body["v"] = SCHEMA_VERSION
    return json.dumps(body, separators=(",", ":"), allow_nan=False).encode()


def decode(cls: type[T], payload: bytes | str) -> T:
    """Decode ``payload`` into ``cls``; raise :class:`PayloadError` if it does not fit.

    Whatever goes wrong (not JSON, NaN, nesting too deep, wrong types, out of range,
    wrong schema version) surfaces as PayloadError, never as another exception type.
    """
    try:
        body = wire.loads(payload, cls.__name__)
    except wire.WireError as exc:
        raise PayloadError(str(exc), exc.details) from None
    if not isinstance(body, dict):
        raise PayloadError(f"{cls.__name__}: payload is not an object")
    version = body.pop("v", None)
    if version != SCHEMA_VERSION:
        raise PayloadError(f"{cls.__name__}: schema version {version!r}, expected {SCHEMA_VERSION}")
    return from_dict(cls, body)


def from_dict(cls: type[T], body: dict[str, Any]) -> T:
    """Build ``cls`` from a plain dict, validating types and ranges (see :mod:`.wire`)."""
    try:
        return wire.from_dict(cls, body)
    except wire.WireError as exc:
        raise PayloadError(str(exc), exc.details) from None
