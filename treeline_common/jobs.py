"""The root <-> cluster contracts: job status, job request, placement and cluster push.

Defined once here and imported by the root, the cluster and the CLI; each is a frozen
dataclass with :meth:`to_dict` / ``from_dict`` (validated through :mod:`.wire`, so a bad
document raises :class:`~treeline_common.errors.InvalidInput` naming every bad field) and
a schema version ``v``.

Flow: the root sends a :class:`JobRequest` to ``POST /api/deploy/<service_id>/<instance>``;
the cluster plans it into a :class:`Placement` (one :class:`StagePlacement` per pipeline
stage, plus an optional relay entry stage) and reports every deployment as a
:class:`JobReport` inside a :class:`ClusterPush` to ``POST /api/information/<cluster_id>``.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from treeline_common import wire
from treeline_common.aggregate_schema import aggregate_problems
from treeline_common.cascade import CascadeJob, EdgeRule
from treeline_common.errors import InvalidInput
from treeline_common.training import TrainingSpec
from treeline_common.training_hierarchy import TrainingPart

SCHEMA_VERSION = 1
T = TypeVar("T")


class JobStatus(enum.StrEnum):
    """Where a deployment (one service instance) stands; the only definition of these words.

    REQUESTED -> SCHEDULED -> DEPLOYING -> RUNNING; DEGRADED while a running (or deploying)
    deployment is being re-planned after a fault; FAILED when nothing can be scheduled (it
    is retried by itself when capacity returns); DELETED on request (final).

    A :class:`enum.StrEnum`: members compare equal to their plain-string values, ``str()``
    and f-strings give the value, and :func:`treeline_common.wire.to_dict` encodes them by value.
    """

    REQUESTED = "REQUESTED"
    SCHEDULED = "SCHEDULED"
    DEPLOYING = "DEPLOYING"
    RUNNING = "RUNNING"
    DEGRADED = "DEGRADED"
    FAILED = "FAILED"
    DELETED = "DELETED"


IN_PROGRESS = frozenset({JobStatus.REQUESTED, JobStatus.SCHEDULED, JobStatus.DEPLOYING,
                         JobStatus.DEGRADED})
ACTIVE = IN_PROGRESS | {JobStatus.RUNNING}
SETTLED = frozenset({JobStatus.RUNNING, JobStatus.FAILED, JobStatus.DELETED})


def _decode(cls: type[T], body: Any, what: str) -> T:
    if isinstance(body, Mapping) and body.get("v", SCHEMA_VERSION) != SCHEMA_VERSION:
        raise InvalidInput(f"invalid {what}: schema version {body.get('v')!r}, expected {SCHEMA_VERSION}",
                           [{"path": "v", "message": f"must be {SCHEMA_VERSION}"}])
    try:
        return wire.from_dict(cls, body)
    except wire.WireError as exc:
        raise InvalidInput(f"invalid {what}: {exc}", exc.details) from None


def _encode(message: Any) -> dict[str, Any]:
    body = wire.to_dict(message)
    body["v"] = SCHEMA_VERSION
    return body


@dataclass(frozen=True)
class ModelRef:
    """The registry version a job deploys, by digest: clusters and nodes fetch the bytes from
    the root they are configured with now (``/api/artifacts/<sha256>``), so no stored job
    carries an absolute URL of a service that may have moved."""

    name: str
    version: int = field(metadata={"min": 1})
    sha256: str = field(metadata={"pattern": "[0-9a-fA-F]{64}", "pattern_message": "must be 64 hex digits"})
    signature: dict[str, Any] | None = None


@dataclass(frozen=True)
class JobRequest:
    """Root -> cluster: deploy one instance of an ML microservice (the SLA block as sent)."""

    service_id: str
    instance: int = field(metadata={"min": 0})
    microservice: dict[str, Any]
    model: ModelRef
    root_url: str = ""
    cascade: CascadeJob | None = None  # SLA model.cascade: the small edge model, resolved (.cascade)
    # an ``ml-training`` microservice: its training block (``model`` above is the starting version)
    training: TrainingSpec | None = None
    # a hierarchical training job (training.hierarchical): the part this instance runs
    training_part: TrainingPart | None = None

    @property
    def deployment_id(self) -> str:
        return deployment_id_of(self.service_id, self.instance)

    def to_dict(self) -> dict[str, Any]:
        return _encode(self)

    @classmethod
    def from_dict(cls, body: Any) -> JobRequest:
        """Validated decode; InvalidInput with ``{path, message}`` per bad field."""
        return _decode(cls, body, "job")


def deployment_id_of(service_id: str, instance: Any) -> str:
    """The deployment id of a service instance: ``<service_id>-<instance>``."""
    return f"{service_id}-{instance}"


@dataclass(frozen=True)
class Entry:
    """Where callers send requests: a node's data-plane endpoint and the stage key there."""

    node_id: str
    endpoint: str
    stage_key: str


@dataclass(frozen=True)
class StagePlacement:
    """One pipeline stage of a placement: which partition runs on which node.

    ``index`` is the stage's position (-1 for a relay entry stage without a model);
    ``state`` is the last reported stage state (PENDING until the node reports).
    """

    index: int
    node_id: str
    endpoint: str
    stage_key: str
    inputs: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()
    node_name: str = ""
    profile: str = ""
    sha256: str = ""
    flops: int = 0
    param_bytes: int = 0
    cut_bytes: int = 0
    state: str = "PENDING"
    reason: str = ""
    predicted_compute_ms: float | None = None
    predicted_transfer_in_ms: float | None = None


@dataclass(frozen=True)
class Placement:
    """A deployment's plan at one ``generation``: stages in order, the entry, the prediction.

    ``inputs`` are the request's input specs ``[{name, shape, dtype}]``, one per model input;
    ``input`` repeats the first (for readers of single-input placements); ``predicted`` the
    planner's summary (latency_ms, throughput_rps, energy_mj, ...).
    """

    deployment_id: str
    generation: int = field(metadata={"min": 0})
    stages: tuple[StagePlacement, ...]
    strategy: str = ""
    input: dict[str, Any] = field(default_factory=dict)
    outputs: tuple[str, ...] = ()
    entry: Entry | None = None
    inputs: tuple[dict[str, Any], ...] = ()
    relay: StagePlacement | None = None
    predicted: dict[str, Any] | None = None
    cascade: StagePlacement | None = None  # the small model's edge stage (the entry), SLA model.cascade
    cascade_rule: EdgeRule | None = None  # when the edge stage escalates (with ``cascade``)

    def all_stages(self) -> tuple[StagePlacement, ...]:
        """The stages plus the relay entry stage and the cascade's edge stage, if any."""
        extra = (self.relay, self.cascade)
        return (*self.stages, *(s for s in extra if s is not None))

    def node_ids(self) -> frozenset[str]:
        return frozenset(s.node_id for s in self.all_stages())

    def with_states(self, state: str) -> Placement:
        """A copy with every stage (and the relay) in ``state``."""
        return replace(self, stages=tuple(replace(s, state=state) for s in self.stages),
                       relay=replace(self.relay, state=state) if self.relay else None,
                       cascade=replace(self.cascade, state=state) if self.cascade else None)

    def to_dict(self) -> dict[str, Any]:
        return _encode(self)

    @classmethod
    def from_dict(cls, body: Any) -> Placement:
        return _decode(cls, body, "placement")


@dataclass(frozen=True)
class JobReport:
    """Cluster -> root: one deployment's status inside a :class:`ClusterPush`."""

    service_id: str
    instance: int
    status: JobStatus
    status_detail: str = ""
    placement: Placement | None = None
    explanation: dict[str, Any] | None = None
    generation: int = 0
    events: tuple[dict[str, Any], ...] = ()  # newest last; see :func:`event`
    caller_key: str = ""  # signs requests to the entry of a private service; the root shows it to the owner
    # the registry version the placement serves (None: unknown, e.g. a cluster before this field)
    serving_model: ModelRef | None = None
    # digest of a version the cluster refused (a canary rolled it back): asked for, not served
    refused_sha256: str = ""

    def __post_init__(self) -> None:
        for index, item in enumerate(self.events):
            if isinstance(item.get("ts"), bool) or not isinstance(item.get("ts"), int | float):
                raise ValueError(f"events[{index}].ts must be a number")
            for name in ("kind", "cause"):
                if not isinstance(item.get(name), str):
                    raise ValueError(f"events[{index}].{name} must be a string")


def event(ts: float, kind: str, cause: str, **details: Any) -> dict[str, Any]:
    """One deployment event: ``{ts, kind, cause, ...}``.

    Kinds: ``replan`` (a new plan went live: ``old_cost_ms``, ``new_cost_ms``, ``duration_s``,
    ``generation``), ``kept`` (a re-plan found nothing better by the margin), ``retry`` (an
    attempt failed; ``retry_in_s``), ``failed`` (nothing can be scheduled), ``deployed``.
    """
    return {"ts": ts, "kind": kind, "cause": cause, **details}


@dataclass(frozen=True)
class ClusterPush:
    """Cluster -> root every push interval and at once on a change: aggregate and jobs."""

    aggregate: dict[str, Any] = field(default_factory=dict)
    jobs: tuple[JobReport, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return _encode(self)

    @classmethod
    def from_dict(cls, body: Any) -> ClusterPush:
        """Validated decode: the jobs by their schema, the aggregate's known fields by
        :func:`treeline_common.aggregate_schema.aggregate_problems`; InvalidInput names each."""
        push = _decode(cls, body, "cluster information")
        problems = aggregate_problems(push.aggregate)
        if problems:
            first = problems[0]
            raise InvalidInput(f"invalid cluster information: {first['path']}: {first['message']}", problems)
        return push
