"""Training at the edge (federated learning with Flower): the contracts, defined once.

An SLA microservice with ``virtualization: "ml-training"`` carries a ``training`` block
(schema: ``deployment_descriptors/sla_v2.schema.json``). :meth:`TrainingSpec.from_sla` reads it
and states the rules a schema cannot (the parameters each strategy takes, ``min_clients`` and
``fraction_fit`` consistent), raising :class:`TrainingError` naming the field.

Over MQTT (topics in :mod:`treeline_common.topics`), each payload JSON through
:mod:`treeline_common.messages`' ``encode``/``decode``:

- cluster -> node ``nodes/<id>/control/train``: :class:`TrainCommand` (``start`` a server or a
  client of job ``job_id``, or ``stop`` it). A node MUST answer every start with a
  :class:`TrainReport` (``STARTED``, or ``REFUSED`` with the reason: no training extra
  installed, no data file for the selector, ...) and MUST never send its data anywhere: only
  model parameters travel, between the Flower client and the Flower server (gRPC).
- node -> cluster ``nodes/<id>/training``: :class:`TrainReport`: per round on the server
  (``ROUND``: round, loss, accuracy on the held-out split, clients that took part), per round on a
  client (``ROUND`` with ``bytes_sent``: the serialized parameters it sent), ``DONE`` on the
  server with the trained model (ONNX, base64; small models only, see :data:`MAX_RESULT_BYTES`),
  or ``FAILED`` with the reason (one line; the full log stays in the node's ``flower.log``).

Faults (issue 14): a server ``ROUND`` report carries the checkpoint of the aggregated
parameters after that round (``checkpoint_b64``: an ``.npz`` of the arrays in the model's
``state_dict`` order, with its SHA-256; omitted above :data:`MAX_CHECKPOINT_BYTES`). When the
server fails, the cluster starts a new one with that checkpoint and ``start_round`` (the rounds
already completed; it runs ``rounds - start_round`` more and numbers them on), then restarts
the clients on its new address. A start of a job that already runs on the node in that role is
idempotent for the same ``server_address`` (answered ``STARTED`` again) and replaces the
running process for another one (the old one ends ``STOPPED``).

The Flower processes a node starts print :class:`RoundProgress` JSON lines on stdout, one per
event; the node engine turns them into reports (:mod:`node_engine.training`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from treeline_common.cascade import CascadeError, parse_model_ref
from treeline_common.training_hierarchy import HierarchyError, HierarchySpec, parse_hierarchy

TRAINING_VIRTUALIZATION = "ml-training"
FRAMEWORKS = ("flower",)
TRAINABLE = ("all", "head")
DP_SIDES = ("client", "server")

# Strategy name -> the parameters it takes (Flower's keyword names) with their defaults.
STRATEGY_PARAMETERS: dict[str, dict[str, float]] = {
    "fedavg": {},
    "fedprox": {"proximal_mu": 0.1},
    "fedadam": {"eta": 0.1, "eta_l": 0.1, "beta_1": 0.9, "beta_2": 0.99, "tau": 1e-3},
}
# Bounds per parameter: (low, high, low inclusive)
_PARAMETER_BOUNDS: dict[str, tuple[float, float, bool]] = {
    "proximal_mu": (0.0, 1e6, True), "eta": (0.0, 1e3, False), "eta_l": (0.0, 1e3, False),
    "beta_1": (0.0, 1.0, True), "beta_2": (0.0, 1.0, True), "tau": (0.0, 1.0, False),
}

ROLES = ("server", "client", "aggregator")  # aggregator: a hierarchical job's cluster aggregator
ACTIONS = ("start", "stop")
REPORT_STATES = ("STARTED", "REFUSED", "ROUND", "DONE", "FAILED", "STOPPED")
MAX_RESULT_BYTES = 8 * 1024 * 1024  # a DONE report carries the ONNX inline up to this size
MAX_CHECKPOINT_BYTES = MAX_RESULT_BYTES  # a ROUND report carries the checkpoint inline up to this size
DP_DELTA = 1e-5  # the δ of the (ε, δ) every job reports (gaussian_epsilon)


class TrainingError(ValueError):
    """A training block that cannot be used; ``path`` names the field (relative to ``training``)."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
        self.message = message


@dataclass(frozen=True)
class PrivacySpec:
    """Differential privacy through Flower's fixed-clipping wrappers.

    ``side``: ``client`` (each client clips its update to ``clipping_norm`` before sending;
    the server adds Gaussian noise of std ``noise_multiplier · clipping_norm / clients``) or
    ``server`` (the server clips and adds the noise).
    """

    clipping_norm: float = field(metadata={"min": 1e-12})
    noise_multiplier: float = field(metadata={"min": 0.0})
    side: str = field(default="client", metadata={"pattern": "client|server",
                                                   "pattern_message": "must be 'client' or 'server'"})


@dataclass(frozen=True)
class TrainingSpec:
    """The SLA's ``training`` block with defaults applied.

    ``data``: the node label that marks nodes holding the data (``data:digits``); a client
    reads ``<data dir>/<name>.npz`` (``digits.npz``). ``model_name``/``model_version``: the
    registry version training starts from (the result's lineage parent); ``output_name``: the
    model the result is registered under (default: the starting model's name).
    """

    rounds: int = field(metadata={"min": 1, "max": 1000})
    data: str
    model_name: str
    model_version: str = "latest"  # a number, an alias or "latest", as text
    framework: str = "flower"
    strategy: str = "fedavg"
    parameters: dict[str, float] = field(default_factory=dict)
    min_clients: int = field(default=2, metadata={"min": 1})
    fraction_fit: float = field(default=1.0, metadata={"min": 1e-9, "max": 1.0})
    local_epochs: int = field(default=1, metadata={"min": 1, "max": 100})
    batch_size: int = field(default=32, metadata={"min": 1, "max": 4096})
    learning_rate: float = field(default=0.1, metadata={"min": 1e-9})
    trainable: str = "all"
    privacy: PrivacySpec | None = None
    output_name: str = ""
    hierarchical: HierarchySpec | None = None  # :mod:`treeline_common.training_hierarchy`; None: flat

    @property
    def data_file(self) -> str:
        """The file a client trains on, in its data directory: ``data:digits`` -> ``digits.npz``."""
        return self.data.split(":", 1)[-1] + ".npz"

    def strategy_parameters(self) -> dict[str, float]:
        """The strategy's parameters: its defaults, overridden by the SLA's."""
        return {**STRATEGY_PARAMETERS[self.strategy], **self.parameters}

    @classmethod
    def from_sla(cls, block: Any) -> TrainingSpec:
        """Read an SLA ``training`` block; TrainingError naming the field on the first bad one.

        The schema has checked types and ranges; this states what it cannot: a strategy's own
        parameters, ``min_clients`` reachable with ``fraction_fit``, the model reference.
        """
        if not isinstance(block, Mapping):
            raise TrainingError("", "must be an object")
        framework = block.get("framework", "flower")
        if framework not in FRAMEWORKS:
            raise TrainingError("framework", f"must be one of {', '.join(FRAMEWORKS)}, got {framework!r}")
        strategy = block.get("strategy", "fedavg")
        if strategy not in STRATEGY_PARAMETERS:
            known = ", ".join(STRATEGY_PARAMETERS)
            raise TrainingError("strategy", f"must be one of {known}, got {strategy!r}")
        parameters = _parameters(block.get("parameters", {}), strategy)
        rounds = _integer(block, "rounds", 1, 1000, None)
        min_clients = _integer(block, "min_clients", 1, 10_000, 2)
        fraction = _number(block, "fraction_fit", 1.0, low=0.0, high=1.0, low_inclusive=False)
        data = block.get("data")
        if not isinstance(data, str) or not data.startswith("data:") or len(data) < 6:
            raise TrainingError("data", f"must be a node label like 'data:digits', got {str(data)[:80]!r}")
        try:
            name, version = parse_model_ref(block.get("model", ""), "model")
        except CascadeError as exc:
            raise TrainingError("model", exc.message) from None
        hierarchical = _hierarchy(block.get("hierarchical"))
        trainable = block.get("trainable", "all")
        if trainable not in TRAINABLE:
            raise TrainingError("trainable", f"must be one of {', '.join(TRAINABLE)}, got {trainable!r}")
        return cls(rounds=rounds, data=data, model_name=name,
                   model_version=str(version) if version is not None else "latest",
                   framework=framework, strategy=strategy, parameters=parameters, min_clients=min_clients,
                   fraction_fit=fraction, local_epochs=_integer(block, "local_epochs", 1, 100, 1),
                   batch_size=_integer(block, "batch_size", 1, 4096, 32),
                   learning_rate=_number(block, "learning_rate", 0.1, low=0.0, high=100.0,
                                         low_inclusive=False),
                   trainable=trainable, privacy=_privacy_for(block.get("differential_privacy"), hierarchical),
                   output_name=str(block.get("output_name") or name), hierarchical=hierarchical)


def _integer(block: Mapping[str, Any], key: str, low: int, high: int, default: int | None) -> int:
    value = block.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise TrainingError(key, f"must be an integer in {low}..{high}, got {value!r}")
    return value


def _number(block: Mapping[str, Any], key: str, default: float, *, low: float, high: float,
            low_inclusive: bool = True) -> float:
    value = block.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise TrainingError(key, f"must be a number, got {value!r}")
    if value > high or value < low or (value == low and not low_inclusive):
        interval = f"{'[' if low_inclusive else '('}{low}, {high}]"
        raise TrainingError(key, f"must be in {interval}, got {value!r}")
    return float(value)


def _parameters(raw: Any, strategy: str) -> dict[str, float]:
    if not isinstance(raw, Mapping):
        raise TrainingError("parameters", "must be an object")
    known = STRATEGY_PARAMETERS[strategy]
    out = {}
    for key in raw:
        if key not in known:
            takes = ", ".join(known) or "none"
            raise TrainingError(f"parameters.{key}", f"is not a parameter of {strategy} (it takes: {takes})")
        low, high, inclusive = _PARAMETER_BOUNDS[key]
        try:
            out[key] = _number(raw, key, 0.0, low=low, high=high, low_inclusive=inclusive)
        except TrainingError as exc:
            raise TrainingError(f"parameters.{key}", exc.message) from None
    return out


def _hierarchy(raw: Any) -> HierarchySpec | None:
    try:
        return parse_hierarchy(raw)
    except HierarchyError as exc:
        raise TrainingError(f"hierarchical.{exc.path}" if exc.path else "hierarchical", exc.message) from None


def _privacy_for(raw: Any, hierarchical: HierarchySpec | None) -> PrivacySpec | None:
    """The DP block; client-side DP is refused in hierarchical mode (the cluster aggregators,
    the root's Flower clients, would have to clip: they do not)."""
    privacy = _privacy(raw)
    if privacy is not None and hierarchical is not None and privacy.side == "client":
        raise TrainingError("differential_privacy.side", "client-side differential privacy is not supported "
                                                         "with hierarchical; use side 'server'")
    return privacy


def _privacy(raw: Any) -> PrivacySpec | None:
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise TrainingError("differential_privacy", "must be an object")
    side = raw.get("side", "client")
    if side not in DP_SIDES:
        raise TrainingError("differential_privacy.side", f"must be 'client' or 'server', got {side!r}")
    for key in ("clipping_norm", "noise_multiplier"):
        if key not in raw:
            raise TrainingError(f"differential_privacy.{key}", "is a required property")
    try:
        clip = _number(raw, "clipping_norm", 0.0, low=0.0, high=1e6, low_inclusive=False)
        noise = _number(raw, "noise_multiplier", 0.0, low=0.0, high=1e3)
    except TrainingError as exc:
        raise TrainingError(f"differential_privacy.{exc.path}", exc.message) from None
    return PrivacySpec(clip, noise, side)


# ---------------------------------------------------------------- wire messages


@dataclass(frozen=True)
class TrainCommand:
    """``nodes/<id>/control/train``: start or stop this node's part of a training job.

    ``server_address``: ``host:port`` of the Flower server; for a server start the port may be
    0 (the node picks a free one and reports the address in its ``STARTED``), clients dial it.
    ``model_url``/``model_sha256``: the starting model (server only; the node MUST check the
    digest). ``clients``: how many clients the cluster started (the server waits for
    ``spec.min_clients`` of them each round). ``start_round`` (server): rounds already completed
    by an earlier server of this job; with ``checkpoint_b64`` (the parameters after that round,
    ``.npz``; the node MUST check ``checkpoint_sha256``) the server resumes from there and runs
    the remaining ``spec.rounds - start_round`` rounds. Role ``aggregator`` (a hierarchical job's
    cluster aggregator, :mod:`node_engine.training.aggregator`): ``server_address`` is its local
    address (port 0: the node picks), ``upstream_address`` the root aggregator it connects to as
    a Flower client; its ``STARTED`` carries the local address its clients dial. Action
    ``expect`` (role ``server``): the running server's first round now waits for only ``clients``
    clients (the cluster sends it when a client refused for good, so round 1 does not sit out the
    join grace waiting for a client that will never connect); no answer.
    """

    job_id: str = field(metadata={"pattern": r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}",
                                  "pattern_message": "must be a job id"})
    action: str = field(metadata={"pattern": "start|stop|expect",
                                  "pattern_message": "must be 'start', 'stop' or 'expect'"})
    role: str = field(default="client", metadata={
        "pattern": "server|client|aggregator",
        "pattern_message": "must be 'server', 'client' or 'aggregator'"})
    spec: TrainingSpec | None = None
    server_address: str = field(default="", metadata={"pattern": r"([A-Za-z0-9.\-]+:\d{1,5})?",
                                                       "pattern_message": "must be host:port"})
    model_url: str = ""
    model_sha256: str = field(default="", metadata={"pattern": "([0-9a-f]{64})?",
                                                    "pattern_message": "must be 64 lowercase hex digits"})
    clients: int = field(default=0, metadata={"min": 0})
    start_round: int = field(default=0, metadata={"min": 0})
    checkpoint_b64: str = field(default="", repr=False)
    checkpoint_sha256: str = field(default="", metadata={
        "pattern": "([0-9a-f]{64})?", "pattern_message": "must be 64 lowercase hex digits"})
    upstream_address: str = field(default="", metadata={"pattern": r"([A-Za-z0-9.\-]+:\d{1,5})?",
                                                         "pattern_message": "must be host:port"})

    def __post_init__(self) -> None:
        if self.action == "start" and self.role == "aggregator" and not self.upstream_address:
            raise ValueError("upstream_address: an aggregator start needs the root aggregator's host:port")
        if self.action == "start" and self.spec is None:
            raise ValueError("spec: a start command needs the training spec")
        if self.action == "start" and not self.server_address:
            raise ValueError("server_address: a start command needs the server's host:port")
        if self.spec is not None and self.start_round > self.spec.rounds:
            raise ValueError(f"start_round: {self.start_round} is past the job's {self.spec.rounds} rounds")
        if bool(self.checkpoint_b64) != bool(self.checkpoint_sha256):
            raise ValueError("checkpoint_sha256: a checkpoint and its digest go together")


@dataclass(frozen=True)
class RoundProgress:
    """One event of a Flower process (a JSON line on its stdout), and the body of a report.

    ``round`` 0 is the starting model's evaluation. ``loss``/``accuracy``: on the held-out split
    (server) or the local training loss (client). ``clients``: how many clients' updates the
    server aggregated. ``bytes_sent``: bytes of serialized parameters a client sent this round.
    ``checkpoint_path`` (server rounds): the ``.npz`` of the aggregated parameters after it.
    ``epsilon``: the privacy spent up to this round (δ = :data:`DP_DELTA`), None without DP.
    """

    event: str  # "round" | "done" | "failed"
    round: int = field(default=0, metadata={"min": 0})
    loss: float | None = None
    accuracy: float | None = None
    clients: int = field(default=0, metadata={"min": 0})
    bytes_sent: int = field(default=0, metadata={"min": 0})
    seconds: float = field(default=0.0, metadata={"min": 0.0})
    reason: str = ""
    result_path: str = ""
    epsilon: float | None = None
    checkpoint_path: str = ""


@dataclass(frozen=True)
class TrainReport:
    """``nodes/<id>/training``: a node's training state (see the module docstring)."""

    node_id: str
    job_id: str
    role: str
    state: str
    round: int = field(default=0, metadata={"min": 0})
    loss: float | None = None
    accuracy: float | None = None
    clients: int = field(default=0, metadata={"min": 0})
    bytes_sent: int = field(default=0, metadata={"min": 0})
    seconds: float = field(default=0.0, metadata={"min": 0.0})
    reason: str = ""
    result_onnx_b64: str = field(default="", repr=False)
    result_sha256: str = ""
    epsilon: float | None = None
    ts: float = 0.0
    server_address: str = ""  # a server's STARTED: the host:port its clients dial
    checkpoint_b64: str = field(default="", repr=False)  # a server's ROUND: the parameters after it
    checkpoint_sha256: str = ""

    def __post_init__(self) -> None:
        if self.state not in REPORT_STATES:
            raise ValueError(f"state must be one of {', '.join(REPORT_STATES)}, not {self.state!r}")
        if self.role not in ROLES:
            raise ValueError(f"role must be one of {', '.join(ROLES)}, not {self.role!r}")


def gaussian_epsilon(noise_multiplier: float, rounds: int, delta: float = DP_DELTA) -> float | None:
    """Client-level (ε, δ) of ``rounds`` Gaussian mechanisms with every client in every round.

    Flower's fixed-clipping wrappers bound one client's effect on the aggregate by the clipping
    norm and add Gaussian noise of ``noise_multiplier`` times that bound, so each round is a
    Gaussian mechanism of noise multiplier ``z``. Rényi DP (Mironov 2017): one round has
    ``ε_α = α / (2 z²)``, ``rounds`` compose additively, and ``ε = min_α T·α/(2z²) + log(1/δ)/(α−1)``
    over α in 1.01..256. Conservative: no amplification by sampling is credited (``fraction_fit``
    below 1 would lower it). None when ``noise_multiplier`` is 0 (no privacy).
    """
    if noise_multiplier <= 0 or rounds < 1:
        return None
    alphas = [1.01 + 0.01 * i for i in range(100)] + [float(a) for a in range(3, 257)]
    return min(rounds * a / (2 * noise_multiplier ** 2) + math.log(1 / delta) / (a - 1) for a in alphas)
