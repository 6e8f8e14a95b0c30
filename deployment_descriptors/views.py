"""Typed, read-only views of a validated SLA, so no orchestrator digs into raw dicts.

``parse_sla`` validates first and only then builds the views, so every view can assume the
shape the schema guarantees; defaults the schema documents (``objective="latency"``,
``max_partitions=1``, ``variants=("fp32",)``, ``accuracy_floor=0.0``, ``version="latest"``) are
filled in here, once. The views copy the document at parse time: later changes to the caller's
dict do not show through. ``raw`` keeps the (copied) original for forwarding it unchanged
(root -> cluster); treat it as read-only.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from treeline_common.errors import InvalidInput

from .inputs import InputSpec, declared_inputs
from .validation import ML_VIRTUALIZATION, validate_microservice, validate_sla

DEFAULT_VERSION = "latest"
DEFAULT_OBJECTIVE = "latency"
DEFAULT_MAX_PARTITIONS = 1
DEFAULT_VARIANTS = ("fp32",)
DEFAULT_ACCURACY_FLOOR = 0.0


@dataclass(frozen=True)
class NodeSelector:
    """Names a node (``node``) or any node carrying a label (``label``); exactly one is set."""

    node: str | None = None
    label: str | None = None

    def matches(self, node_name: str, labels: tuple[str, ...] | list[str] = ()) -> bool:
        """True when a node with this name and these labels satisfies the selector."""
        if self.node is not None:
            return node_name == self.node
        return self.label is not None and self.label in labels

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any] | None) -> NodeSelector | None:
        if doc is None:
            return None
        return cls(node=doc.get("node"), label=doc.get("label"))


@dataclass(frozen=True)
class Privacy:
    """The model block's ``privacy``: how the service's data plane is protected.

    Present in the SLA, it asks for privacy: callers must sign their requests with the
    service's caller key (``authenticate_callers``, default true) and, with
    ``encrypt_tensors``, tensors between stages on different nodes travel CURVE-encrypted.
    Inner stages always require the deployment's data key, privacy or not.
    """

    encrypt_tensors: bool = False
    authenticate_callers: bool = True

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any] | None) -> Privacy | None:
        if doc is None:
            return None
        return cls(encrypt_tensors=bool(doc.get("encrypt_tensors", False)),
                   authenticate_callers=bool(doc.get("authenticate_callers", True)))


@dataclass(frozen=True)
class RolloutSpec:
    """The ``model.rollout`` block: how a new model version replaces the serving one.

    ``strategy`` ``canary`` (default) or ``immediate``; ``canary_share`` (0..1] of the entry's
    requests go to the new version; it is promoted after ``min_requests`` answered requests
    (live and probe) when its latency stays under ``max_latency_ms`` (None: the SLA's
    ``e2e_latency``, else unchecked) and it disagrees with the serving version on at most
    ``max_disagreement`` of ``probe`` generated inputs; rolled back otherwise or after
    ``timeout_s`` seconds.
    """

    strategy: str = "canary"
    canary_share: float = 0.1
    min_requests: int = 20
    max_latency_ms: float | None = None
    max_disagreement: float = 0.0
    probe: int = 8
    timeout_s: float = 60.0

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any] | None) -> RolloutSpec:
        doc = doc or {}
        default = cls()
        return cls(strategy=str(doc.get("strategy", default.strategy)),
                   canary_share=float(doc.get("canary_share", default.canary_share)),
                   min_requests=int(doc.get("min_requests", default.min_requests)),
                   max_latency_ms=_number(doc.get("max_latency_ms")),
                   max_disagreement=float(doc.get("max_disagreement", default.max_disagreement)),
                   probe=int(doc.get("probe", default.probe)),
                   timeout_s=float(doc.get("timeout_s", default.timeout_s)))


@dataclass(frozen=True)
class ModelSpec:
    """The ``model`` block of an ``ml-model`` microservice, defaults applied.

    ``inputs`` is ``None`` when the SLA leaves the inputs to the registered model's signature;
    ``inputs_key`` names the field they came from (``"inputs"``, or ``"input"`` for the single
    form) so errors can point at it. ``input_*`` read the first input (single-input callers).
    ``version`` is an int (a registry version) or a string (``"latest"`` or an alias).
    """

    name: str
    version: int | str = DEFAULT_VERSION
    inputs: tuple[InputSpec, ...] | None = None
    inputs_key: str | None = None
    objective: str = DEFAULT_OBJECTIVE
    max_partitions: int = DEFAULT_MAX_PARTITIONS
    variants: tuple[str, ...] = DEFAULT_VARIANTS
    accuracy_floor: float = DEFAULT_ACCURACY_FLOOR
    source: NodeSelector | None = None
    sink: NodeSelector | None = None
    scheduler_profile: str = "default"
    privacy: Privacy | None = None  # None: no privacy asked (open entry, plain tensors)
    rollout: RolloutSpec = RolloutSpec()

    @property
    def input_name(self) -> str | None:
        return self.inputs[0].name if self.inputs else None

    @property
    def input_shape(self) -> tuple[int, ...] | None:
        return self.inputs[0].shape if self.inputs else None

    @property
    def input_dtype(self) -> str | None:
        return self.inputs[0].dtype if self.inputs else None

    @property
    def encrypt_tensors(self) -> bool:
        return self.privacy is not None and self.privacy.encrypt_tensors

    @property
    def authenticate_callers(self) -> bool:
        return self.privacy is not None and self.privacy.authenticate_callers

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> ModelSpec:
        inputs, key = declared_inputs(doc)
        return cls(
            name=doc["name"],
            version=doc.get("version", DEFAULT_VERSION),
            inputs=inputs,
            inputs_key=key,
            objective=doc.get("objective", DEFAULT_OBJECTIVE),
            max_partitions=doc.get("max_partitions", DEFAULT_MAX_PARTITIONS),
            variants=tuple(doc.get("variants", DEFAULT_VARIANTS)),
            accuracy_floor=float(doc.get("accuracy_floor", DEFAULT_ACCURACY_FLOOR)),
            source=NodeSelector.from_dict(doc.get("source")),
            sink=NodeSelector.from_dict(doc.get("sink")),
            scheduler_profile=str(doc.get("scheduler_profile", "default")),
            privacy=Privacy.from_dict(doc.get("privacy")),
            rollout=RolloutSpec.from_dict(doc.get("rollout")),
        )


@dataclass(frozen=True)
class MlConstraints:
    """Treeline's ML constraints of one microservice; ``None`` means "not constrained"."""

    latency_ms: float | None = None
    energy_mj: float | None = None
    min_battery_percent: float | None = None
    privacy_pin_node: str | None = None
    privacy_pin_label: str | None = None
    # boundary_compression: codecs the planner may use on a bottleneck link (() = never), and the
    # largest change of any model output it accepts from them (None: any)
    compression_allow: tuple[str, ...] = ()
    compression_max_abs_diff: float | None = None

    @property
    def privacy_pin(self) -> NodeSelector | None:
        """The pin as a selector (the first partition must run on a node it matches)."""
        if self.privacy_pin_node is None and self.privacy_pin_label is None:
            return None
        return NodeSelector(node=self.privacy_pin_node, label=self.privacy_pin_label)

    @classmethod
    def from_list(cls, constraints: list[Mapping[str, Any]]) -> MlConstraints:
        by_type = {c["type"]: c for c in reversed(constraints)}  # validation forbids repeats
        pin = by_type.get("privacy_pin", {})
        compression = by_type.get("boundary_compression", {})
        return cls(
            latency_ms=_number(by_type.get("e2e_latency", {}).get("threshold_ms")),
            energy_mj=_number(by_type.get("energy", {}).get("max_mj_per_inference")),
            min_battery_percent=_number(by_type.get("battery", {}).get("min_percent")),
            privacy_pin_node=pin.get("node"),
            privacy_pin_label=pin.get("label"),
            compression_allow=tuple(compression.get("allow", ())),
            compression_max_abs_diff=_number(compression.get("max_output_abs_diff")),
        )


def _number(value: Any) -> float | None:
    return None if value is None else float(value)


@dataclass(frozen=True)
class Microservice:
    """One SLA microservice. ``constraints`` holds every constraint (Oakestra's and ML) as given."""

    name: str
    namespace: str
    virtualization: str
    code: str | None
    memory_mb: int | None
    vcpus: int | None
    vgpus: int | None
    model: ModelSpec | None
    ml_constraints: MlConstraints
    constraints: tuple[Mapping[str, Any], ...]
    raw: dict[str, Any] = field(repr=False, compare=False, hash=False)

    @property
    def is_ml(self) -> bool:
        return self.virtualization == ML_VIRTUALIZATION

    def constraints_of(self, kind: str) -> tuple[Mapping[str, Any], ...]:
        """The raw constraints of one ``type`` (e.g. Oakestra's ``direct``), in SLA order."""
        return tuple(c for c in self.constraints if c.get("type") == kind)

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> Microservice:
        constraints = tuple(doc.get("constraints", ()))
        return cls(
            name=doc["microservice_name"],
            namespace=doc["microservice_namespace"],
            virtualization=doc["virtualization"],
            code=doc.get("code"),
            memory_mb=doc.get("memory"),
            vcpus=doc.get("vcpus"),
            vgpus=doc.get("vgpus"),
            model=ModelSpec.from_dict(doc["model"]) if "model" in doc else None,
            ml_constraints=MlConstraints.from_list(list(constraints)),
            constraints=constraints,
            raw=doc,
        )


@dataclass(frozen=True)
class Application:
    name: str
    namespace: str
    description: str
    application_id: str
    microservices: tuple[Microservice, ...]
    raw: dict[str, Any] = field(repr=False, compare=False, hash=False)

    def microservice(self, name: str) -> Microservice:
        """The microservice with this name; ``KeyError`` if there is none."""
        for ms in self.microservices:
            if ms.name == name:
                return ms
        raise KeyError(name)

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> Application:
        return cls(
            name=doc["application_name"],
            namespace=doc["application_namespace"],
            description=doc.get("application_desc", ""),
            application_id=doc.get("applicationID", ""),
            microservices=tuple(Microservice.from_dict(ms) for ms in doc["microservices"]),
            raw=doc,
        )


@dataclass(frozen=True)
class Sla:
    sla_version: str
    customer_id: str
    applications: tuple[Application, ...]
    raw: dict[str, Any] = field(repr=False, compare=False, hash=False)

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> Sla:
        return cls(
            sla_version=doc["sla_version"],
            customer_id=doc["customerID"],
            applications=tuple(Application.from_dict(app) for app in doc["applications"]),
            raw=doc,
        )


def parse_sla(doc: Any) -> Sla:
    """Validate and view an SLA document.

    Raises ``InvalidInput("invalid SLA descriptor", details)`` with the ``validate_sla`` list, which
    the root's error mapping turns into a 400 body.
    """
    problems = validate_sla(doc)
    if problems:
        raise InvalidInput("invalid SLA descriptor", problems)
    return Sla.from_dict(copy.deepcopy(doc))


def callers_must_sign(microservice: Any) -> bool:
    """Whether an SLA microservice dict makes callers sign their requests: its model has a
    ``privacy`` block whose ``authenticate_callers`` is not false (:class:`Privacy`). False for
    anything malformed (what the root stores and what a cluster's job carries both read it)."""
    model = microservice.get("model") if isinstance(microservice, Mapping) else None
    privacy = model.get("privacy") if isinstance(model, Mapping) else None
    return isinstance(privacy, Mapping) and privacy.get("authenticate_callers", True) is not False


def parse_microservice(doc: Any) -> Microservice:
    """Validate and view one SLA microservice (what a cluster receives from the root).

    Raises ``InvalidInput("invalid SLA microservice", details)`` with paths relative to it.
    """
    problems = validate_microservice(doc)
    if problems:
        raise InvalidInput("invalid SLA microservice", problems)
    return Microservice.from_dict(copy.deepcopy(doc))
