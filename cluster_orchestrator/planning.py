"""From stored nodes and a job to a placement document and deploy commands (pure).

The deployer does the I/O; this module holds the decisions in between, so they are
unit-testable without a broker or a root: which nodes the scheduler sees (a frozen
snapshot of the online nodes, telemetry over registration), what the job asks for
(input specs, max partitions), and the exact placement dict of docs/contracts.md with the
DeployCommand of every stage (stage i forwards to stage i+1; the last replies).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import onnx

from cluster_orchestrator.compression import decide as decide_compression
from cluster_orchestrator.compression import route_codecs, unapplied
from cluster_orchestrator.keys import (  # re-exported: the deployer and orchestrator use them from here
    DataPlaneSecurity,
    EncryptionUnavailable,
    caller_key,
    data_key,
    security_for,
)
from cluster_orchestrator.model_inputs import index_limits
from deployment_descriptors import parse_microservice, signature_inputs, signature_problems
from ml_scheduler.costmodel.links import link_figures_of, sender_figures
from ml_scheduler.extract import extract_partitions
from ml_scheduler.scheduler import MlScheduler
from ml_scheduler.snapshot import ClusterSnapshot, NodeView
from treeline_common.capabilities import capabilities_of
from treeline_common.errors import InvalidInput
from treeline_common.jobs import Entry, JobRequest, Placement, StagePlacement, deployment_id_of
from treeline_common.messages import DeployCommand, NextStage, stage_key

log = logging.getLogger(__name__)

RELAY_STAGE = -1  # stage index of the relay entry on the data's source node


def artifact_url(root_url: str, sha256: str) -> str:
    """Where nodes fetch a partition: the root's content-addressed artifact store."""
    return f"{root_url.rstrip('/')}/api/artifacts/{sha256}"


def _accelerator_kinds(doc: Mapping[str, Any]) -> tuple[str, ...]:
    raw = (doc.get("telemetry") or {}).get("accelerators") or doc.get("accelerators") or []
    kinds = []
    for acc in raw:
        kinds.append(str(acc.get("kind") or acc.get("name") or "")
                     if isinstance(acc, Mapping) else str(acc))
    return tuple(k for k in kinds if k)


def _memory_limit(telemetry: Mapping[str, Any], doc: Mapping[str, Any]) -> int | None:
    """Memory the node offers; None (unknown, the scheduler treats it as unlimited) if never declared."""
    for source in (telemetry, doc):
        value = source.get("memory_limit_mb")
        if value:
            return int(value)
    return None


def node_view_fields(doc: Mapping[str, Any]) -> dict[str, Any]:
    """The NodeView fields of a node document; telemetry (fresher) wins over registration."""
    telemetry = doc.get("telemetry") or {}
    battery = telemetry.get("battery") if "battery" in telemetry else doc.get("battery")
    battery_percent = None
    if isinstance(battery, Mapping) and battery.get("percent") is not None:
        battery_percent = float(battery["percent"])
    return {
        "node_id": str(doc["node_id"]),
        "name": str(doc["name"]),
        "profile": str(telemetry.get("profile") or doc.get("profile") or "native"),
        "online": bool(doc.get("online")),
        "speed_factor": float(telemetry.get("speed_factor") or doc.get("speed_factor") or 1.0),
        "memory_limit_mb": _memory_limit(telemetry, doc),
        "arch": str(doc.get("arch") or "x86_64"),
        "accelerators": _accelerator_kinds(doc),
        "battery_percent": battery_percent,
        "labels": tuple(str(label) for label in doc.get("labels") or ()),
        "capabilities": capabilities_of(str(label) for label in doc.get("labels") or ()),
        **_device_figures(doc, telemetry),
    }


def _device_figures(doc: Mapping[str, Any], telemetry: Mapping[str, Any]) -> dict[str, Any]:
    """Declared power, link figures (measured ones where telemetry has them), device class,
    load and emulation flag (NodeView extras)."""
    fields: dict[str, Any] = {
        key: float(doc[key]) for key in ("power_w", "radio_nj_per_byte") if doc.get(key) is not None
    }
    links = link_figures_of(telemetry.get("links"))
    fields["links"] = links
    fields.update(sender_figures(links, doc.get("uplink_mbps"), doc.get("link_rtt_ms")))
    fields["device_class"] = str(doc.get("device_class") or doc.get("profile") or "")
    fields["cpu_percent"] = float(telemetry.get("cpu_percent") or 0.0)
    if telemetry.get("memory_available_mb") is not None:
        fields["memory_available_mb"] = float(telemetry["memory_available_mb"])
    fields["emulated"] = bool(telemetry.get("emulated", doc.get("emulated", False)))
    return fields


def build_snapshot(nodes: Iterable[Mapping[str, Any]]) -> ClusterSnapshot:
    """A frozen ``ClusterSnapshot`` of the nodes; offline ones stay in it with ``online=False``
    so the scheduler filters them with its own named reason."""
    views = tuple(NodeView(**node_view_fields(doc)) for doc in nodes)
    return ClusterSnapshot(nodes=views)


@dataclass(frozen=True)
class JobSpec:
    """What the planner needs from a :class:`~treeline_common.jobs.JobRequest`.

    ``model_url`` is where the model's bytes are fetched: the artifact store of the root this
    cluster is configured with now, by digest (a stored job never pins an old root address).
    """

    service_id: str
    instance: int
    model_sha256: str
    model_url: str
    max_partitions: int
    input_specs: tuple[dict[str, Any], ...]  # [{name, shape, dtype}]; () when neither SLA nor signature says
    output_names: tuple[str, ...]
    microservice: Any = None  # deployment_descriptors.Microservice view
    model_name: str = ""
    model_version: Any = None

    @property
    def deployment_id(self) -> str:
        return deployment_id_of(self.service_id, self.instance)


def parse_job_microservice(microservice: Any) -> Any:
    """The SLA microservice view (deployment_descriptors), or InvalidInput with ``microservice.``
    paths; an ML job must carry a ``model`` block."""
    try:
        view = parse_microservice(microservice)
    except InvalidInput as exc:
        raise InvalidInput("invalid job: bad microservice", [
            dict(d, path=f"microservice.{d.get('path', '')}".rstrip(".")) for d in exc.details]) from None
    if view.model is None:
        raise InvalidInput("invalid job: not an ML microservice", [
            {"path": "microservice.model", "message": "is required (virtualization ml-model)"}])
    return view


def parse_job_body(body: Any, details: list[dict[str, Any]] | None = None) -> JobRequest:
    """A root job body as a validated :class:`JobRequest`; InvalidInput names every bad field
    (``details`` found by the caller, e.g. path mismatches, are reported with them)."""
    problems: list[dict[str, Any]] = list(details or [])
    if not isinstance(body, Mapping):
        raise InvalidInput("invalid job", [*problems, {"path": "", "message": "must be a JSON object"}])
    try:
        parse_job_microservice(body.get("microservice"))
    except InvalidInput as exc:
        problems.extend(exc.details)
    job = None
    try:
        job = JobRequest.from_dict(dict(body))
    except InvalidInput as exc:
        problems.extend(d for d in exc.details if not str(d.get("path", "")).startswith("microservice"))
    if problems or job is None:
        raise InvalidInput("invalid job", problems)
    return job


def job_spec(job: JobRequest, root_url: str) -> JobSpec:
    """Read a job into a :class:`JobSpec`; artifacts resolve against ``root_url``.

    The SLA model block comes through deployment_descriptors' ``ModelSpec`` (defaults
    applied there, once); the registry signature fills the inputs the SLA leaves open.
    """
    view = parse_job_microservice(job.microservice)
    spec = view.model
    signature = job.model.signature or {}
    if spec.inputs:
        input_specs = tuple(i.to_dict() for i in spec.inputs)
    else:
        input_specs = tuple(signature_inputs(signature))
    outputs = tuple(str(o.get("name")) for o in signature.get("outputs") or [] if isinstance(o, Mapping))
    return JobSpec(
        service_id=job.service_id,
        instance=job.instance,
        model_sha256=job.model.sha256.lower(),
        model_url=artifact_url(root_url, job.model.sha256.lower()),
        max_partitions=int(spec.max_partitions),
        input_specs=input_specs,
        output_names=outputs,
        microservice=view,
        model_name=job.model.name or spec.name,
        model_version=job.model.version,
    )


@dataclass(frozen=True)
class PlanOutcome:
    """A placement decision: partitions with their nodes, or the reasons nothing fits.

    ``relay_node_id``: the node where inputs arrive, when it is not stage 0's node; the
    deployer puts a relay stage there so requests really enter at the data's source.
    """

    schedulable: bool
    strategy: str
    partitions: list[Any] = field(default_factory=list)  # ml_scheduler Partition, stage order
    node_ids: list[str] = field(default_factory=list)
    reasons: dict[str, str] = field(default_factory=dict)
    input_names: tuple[str, ...] = ()
    output_names: tuple[str, ...] = ()
    predicted: dict[str, Any] = field(default_factory=dict)
    explanation: dict[str, Any] = field(default_factory=dict)
    relay_node_id: str | None = None
    message: str = ""


def plan(model: Any, graph: Any, nodes: Sequence[Mapping[str, Any]], microservice: Any, profile: Any,
         cost_model: Any) -> PlanOutcome:
    """Schedule ``model`` over ``nodes`` with the ML scheduler and cut it (decide; nothing applied).

    Offline and filtered nodes appear in ``reasons`` with the plugin's reason.
    """
    result = MlScheduler(profile).schedule(graph, build_snapshot(nodes), microservice, cost_model)
    reasons = {str(k): str(v) for k, v in (result.reasons or {}).items()}
    if not result.schedulable and result.message:
        reasons.setdefault("*", result.message)
    input_names = tuple(graph.input_names)
    output_names = tuple(graph.output_names)
    if not result.schedulable:
        return PlanOutcome(schedulable=False, strategy=result.strategy, reasons=reasons,
                           input_names=input_names, output_names=output_names, predicted=result.predicted,
                           explanation=result.explanation, message=result.message)
    partitions = list(extract_partitions(model, graph, list(result.positions)))
    if len(partitions) != len(result.node_ids):
        raise ValueError(f"scheduler gave {len(result.node_ids)} nodes for {len(partitions)} partitions")
    relay = result.source_node_id if result.source_node_id not in (None, result.node_ids[0]) else None
    compressed = decide_compression(model, partitions, result.compression, result.predicted,
                                    microservice.ml_constraints.compression_max_abs_diff,
                                    [i.to_dict() for i in microservice.model.inputs or ()])
    explanation = {**result.explanation, **compressed.explanation,
                   **unapplied(microservice.ml_constraints.compression_allow, compressed, len(partitions))}
    return PlanOutcome(schedulable=True, strategy=result.strategy, partitions=partitions,
                       node_ids=[str(n) for n in result.node_ids], reasons=reasons,
                       input_names=input_names, output_names=output_names, predicted=compressed.predicted,
                       explanation=explanation, relay_node_id=relay, message=result.message)


def input_specs_for(request: JobSpec, input_names: Sequence[str],
                    model: onnx.ModelProto | None = None) -> list[dict[str, Any]]:
    """The placement's ``inputs``: the SLA's (or the registry signature's) specs, else one
    shapeless float32 spec per graph input name (a job whose model has no known signature).
    With ``model``, an input that indexes a table carries ``index_limit`` (its row count,
    :func:`~cluster_orchestrator.model_inputs.index_limits`): valid values are below it."""
    limits = index_limits(model) if model is not None else {}
    if request.input_specs:
        specs = [{"name": str(s.get("name")), "shape": list(s.get("shape") or []),
                  "dtype": str(s.get("dtype") or "float32")} for s in request.input_specs]
    else:
        specs = [{"name": name, "shape": [], "dtype": "float32"} for name in input_names or ("input",)]
    return [{**s, "index_limit": limits[s["name"]]} if s["name"] in limits else s for s in specs]


def check_job_inputs(job: JobRequest, signature: Mapping[str, Any] | None = None) -> None:
    """InvalidInput when the SLA's declared inputs disagree with the model's signature (the
    job's, or ``signature`` when given, e.g. read from the fetched model): paths start with
    ``microservice.model.inputs[i]`` (see :func:`deployment_descriptors.signature_problems`).
    Nothing to check when the SLA declares no inputs or no signature is known."""
    spec = parse_job_microservice(job.microservice).model
    problems = signature_problems(spec.inputs or (), spec.inputs_key,
                                  signature if signature is not None else job.model.signature)
    if problems:
        raise InvalidInput("the SLA's model inputs do not match the model",
                           [dict(p, path=f"microservice.{p['path']}") for p in problems])


def build_placement(
    deployment_id: str,
    generation: int,
    strategy: str,
    input_specs: Sequence[Mapping[str, Any]] | Mapping[str, Any],
    outputs: Sequence[str],
    partitions: Sequence[Any],
    node_ids: Sequence[str],
    nodes_by_id: Mapping[str, Mapping[str, Any]],
    predicted: Mapping[str, Any] | None = None,
    relay_node_id: str | None = None,
) -> Placement:
    """The :class:`~treeline_common.jobs.Placement` of a plan (all stages start PENDING).

    ``input_specs``: one ``{name, shape, dtype}`` per model input (a single mapping: one input);
    the placement's ``input`` is the first of them.

    With ``predicted`` (the scheduler's plan summary) each stage carries its predicted
    compute and inbound transfer ms, and the placement its predicted latency, throughput
    and energy. With ``relay_node_id``, ``relay`` describes the entry stage on that node.
    Stage keys carry the generation, so two generations can be served side by side.
    """
    specs = [input_specs] if isinstance(input_specs, Mapping) else list(input_specs)
    predicted_stages = {int(s["index"]): s for s in (predicted or {}).get("stages", [])}
    stages = []
    for part, node_id in zip(partitions, node_ids, strict=True):
        node = nodes_by_id[node_id]
        index = int(part.index)
        guess = predicted_stages.get(index, {})
        stages.append(StagePlacement(
            index=index, node_id=node_id, node_name=str(node.get("name") or ""),
            profile=str((node.get("telemetry") or {}).get("profile") or node.get("profile") or ""),
            endpoint=str(node.get("data_endpoint") or ""),
            stage_key=stage_key(deployment_id, index, generation),
            inputs=tuple(part.inputs), outputs=tuple(part.outputs), flops=int(part.flops),
            param_bytes=int(part.param_bytes), cut_bytes=int(part.cut_bytes), sha256=part.sha256,
            predicted_compute_ms=guess.get("compute_ms"),
            predicted_transfer_in_ms=guess.get("transfer_in_ms")))
    relay = None
    if relay_node_id is not None and stages:
        node = nodes_by_id[relay_node_id]
        relay = StagePlacement(index=RELAY_STAGE, node_id=relay_node_id,
                               node_name=str(node.get("name") or ""),
                               endpoint=str(node.get("data_endpoint") or ""),
                               stage_key=stage_key(deployment_id, RELAY_STAGE, generation),
                               inputs=stages[0].inputs, outputs=stages[0].inputs)
    first = relay or (stages[0] if stages else None)
    return Placement(
        deployment_id=deployment_id, generation=generation, strategy=strategy,
        input=dict(specs[0]) if specs else {}, inputs=tuple(dict(s) for s in specs),
        outputs=tuple(outputs), stages=tuple(stages), relay=relay,
        entry=Entry(first.node_id, first.endpoint, first.stage_key) if first else None,
        predicted={k: v for k, v in predicted.items() if k != "stages"} if predicted else None,
    )


def deploy_commands(placement: Placement, root_url: str,
                    security: DataPlaneSecurity | None = None) -> list[tuple[str, DeployCommand]]:
    """One (node_id, DeployCommand) per stage; stage i's ``next`` is stage i+1, the last has none.
    A relay entry stage (no artifact) forwards the raw inputs to stage 0; it comes first. A
    cascade's edge stage (``placement.cascade``, :mod:`.cascade`) comes last and is the entry: it
    runs the small model and escalates to the relay, else stage 0.

    With ``security`` carrying a secret, every command carries the generation's
    :func:`data_key`; the entry (the relay, else the first stage) is marked ``entry`` and,
    when callers must authenticate, carries the caller key. With ``encrypt_tensors`` every
    route to a stage on another node names that node's CURVE endpoint and key, and the
    commands ask for encrypted requests; EncryptionUnavailable if such a node reports no
    key (the plan cannot keep the SLA's promise). Pure and deterministic: the same
    placement and security give the same commands, so re-sent commands match the first.
    """
    security = security or DataPlaneSecurity()
    secret = security.secret
    key = data_key(secret, placement.deployment_id, placement.generation) if secret else ""
    callers = ""
    if secret and security.authenticate_callers:
        callers = security.caller_key or caller_key(secret, placement.deployment_id)
    encrypt = bool(secret) and security.encrypt_tensors
    stages = sorted(placement.stages, key=lambda s: s.index)
    relay = placement.relay
    entry_key = relay.stage_key if relay is not None else (stages[0].stage_key if stages else "")
    edge = placement.cascade  # a cascade's edge stage is the entry; it escalates to the one above
    entry_key = edge.stage_key if edge is not None else entry_key

    codecs = route_codecs(placement.predicted)  # boundary compression, on routes to another node only

    def route(sender: str, target: StagePlacement, codec: str = "") -> NextStage:
        if target.node_id == sender:  # same node: handed over in-process
            return NextStage(target.node_id, target.endpoint, target.stage_key)
        if not encrypt:
            return NextStage(target.node_id, target.endpoint, target.stage_key, compression=codec)
        curve = security.curve.get(target.node_id)
        if curve is None:
            raise EncryptionUnavailable(f"{placement.deployment_id}: privacy.encrypt_tensors asks for CURVE, "
                                        f"but node {target.node_name or target.node_id} reports no CURVE key")
        return NextStage(target.node_id, curve.endpoint, target.stage_key, curve_server_key=curve.public_key,
                         compression=codec)

    def command(stage: StagePlacement, nxt: NextStage | None, **fields: Any) -> DeployCommand:
        is_entry = bool(key) and stage.stage_key == entry_key
        return DeployCommand(deployment_id=placement.deployment_id, stage=stage.index,
                             inputs=list(stage.inputs), next=nxt, generation=placement.generation,
                             data_key=key, entry=is_entry, caller_key=callers if is_entry else "",
                             encrypt_tensors=encrypt, **fields)

    commands = []
    for i, stage in enumerate(stages):
        following = stages[i + 1] if i + 1 < len(stages) else None
        nxt = route(stage.node_id, following, codecs.get(stage.index, "")) if following else None
        commands.append((stage.node_id, command(
            stage, nxt, artifact_url=artifact_url(root_url, stage.sha256), sha256=stage.sha256,
            outputs=list(stage.outputs))))
    if relay is not None and stages:
        commands.insert(0, (relay.node_id, command(
            relay, route(relay.node_id, stages[0]), artifact_url="", sha256="", outputs=list(relay.inputs),
            relay=True)))
    if edge is not None and placement.cascade_rule is not None and commands:
        target = relay or stages[0]
        commands.append((edge.node_id, command(
            edge, None, artifact_url=artifact_url(root_url, edge.sha256), sha256=edge.sha256,
            outputs=list(edge.outputs), escalate_to=route(edge.node_id, target),
            cascade_threshold=placement.cascade_rule.threshold,
            cascade_confidence=placement.cascade_rule.confidence)))
    return commands


def plan_cost(predicted: Mapping[str, Any] | None) -> float | None:
    """The number a re-plan compares (lower is better): the bottleneck ms for the throughput
    objective, the end-to-end latency ms otherwise; None when the plan carries no prediction."""
    if not predicted:
        return None
    key = "bottleneck_ms" if predicted.get("objective") == "throughput" else "latency_ms"
    value = predicted.get(key)
    return float(value) if isinstance(value, (int, float)) else None


def secured_commands(placement: Placement, base_url: str, secret: bytes, microservice: Any,
                     nodes: Iterable[Mapping[str, Any]]) -> list[tuple[str, DeployCommand]]:
    """The deploy commands of ``placement`` with the data-plane security its SLA asks for.

    With a cluster ``secret`` every command carries the generation's data key and the entry
    the deployment's caller key (:func:`caller_key`); encrypted routes need every receiving
    node's CURVE key (:class:`EncryptionUnavailable` otherwise). Without a secret the commands
    are plain (tests that build a cluster without one).
    """
    if not secret:
        return deploy_commands(placement, base_url)
    key = caller_key(secret, placement.deployment_id)
    return deploy_commands(placement, base_url, security_for(secret, microservice, nodes, caller_key=key))
