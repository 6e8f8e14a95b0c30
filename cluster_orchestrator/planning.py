"""From stored nodes and a job to a placement document and deploy commands (pure).

The deployer does the I/O; this module holds the decisions in between, so they are
unit-testable without a broker or a root: which nodes the scheduler sees (a frozen
snapshot of the online nodes, telemetry over registration), what the job asks for
(input spec, max partitions), and the exact placement dict of docs/contracts.md with the
DeployCommand of every stage (stage i forwards to stage i+1; the last replies).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from treeline_common.errors import InvalidInput
from treeline_common.messages import DeployCommand, NextStage, stage_key

log = logging.getLogger(__name__)

RELAY_STAGE = -1  # stage index of the relay entry on the data's source node


def deployment_id_of(service_id: str, instance: Any) -> str:
    """The deployment id of a service instance: ``<service_id>-<instance>``."""
    return f"{service_id}-{instance}"


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
        **_device_figures(doc, telemetry),
    }


def _device_figures(doc: Mapping[str, Any], telemetry: Mapping[str, Any]) -> dict[str, Any]:
    """Declared power and link figures, device class, load and emulation flag (NodeView extras)."""
    fields: dict[str, Any] = {
        key: float(doc[key]) for key in ("power_w", "radio_nj_per_byte", "uplink_mbps", "link_rtt_ms")
        if doc.get(key) is not None
    }
    fields["device_class"] = str(doc.get("device_class") or doc.get("profile") or "")
    fields["cpu_percent"] = float(telemetry.get("cpu_percent") or 0.0)
    if telemetry.get("memory_available_mb") is not None:
        fields["memory_available_mb"] = float(telemetry["memory_available_mb"])
    fields["emulated"] = bool(telemetry.get("emulated", doc.get("emulated", False)))
    return fields


def build_snapshot(nodes: Iterable[Mapping[str, Any]]) -> Any:
    """A frozen ``ClusterSnapshot`` of the nodes; offline ones stay in it with ``online=False``
    so the scheduler filters them with its own named reason."""
    from ml_scheduler.snapshot import ClusterSnapshot, NodeView

    views = tuple(NodeView(**node_view_fields(doc)) for doc in nodes)
    return ClusterSnapshot(nodes=views)


@dataclass(frozen=True)
class JobRequest:
    """What the planner needs from the root's job body (validated by the API)."""

    service_id: str
    instance: Any
    model_sha256: str
    model_url: str
    max_partitions: int
    input_spec: dict[str, Any] | None
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
    from deployment_descriptors import parse_microservice

    try:
        view = parse_microservice(microservice)
    except InvalidInput as exc:
        raise InvalidInput("invalid job: bad microservice", [
            dict(d, path=f"microservice.{d.get('path', '')}".rstrip(".")) for d in exc.details]) from None
    if view.model is None:
        raise InvalidInput("invalid job: not an ML microservice", [
            {"path": "microservice.model", "message": "is required (virtualization ml-model)"}])
    return view


def job_request(job: Mapping[str, Any]) -> JobRequest:
    """Read a job body (see contracts.md, root -> cluster) into a :class:`JobRequest`.

    The SLA model block comes through deployment_descriptors' ``ModelSpec`` (defaults
    applied there, once); the registry signature fills the input the SLA leaves open.
    """
    view = parse_job_microservice(job.get("microservice"))
    spec = view.model
    model = job["model"]
    signature = model.get("signature") or {}
    input_spec: Mapping[str, Any] | None = None
    if spec.input_name is not None:
        input_spec = {"name": spec.input_name, "shape": list(spec.input_shape or ()), "dtype": spec.input_dtype}
    else:
        sig_inputs = signature.get("inputs") or []
        input_spec = sig_inputs[0] if sig_inputs and isinstance(sig_inputs[0], Mapping) else None
    outputs = tuple(str(o.get("name")) for o in signature.get("outputs") or [] if isinstance(o, Mapping))
    return JobRequest(
        service_id=str(job["service_id"]),
        instance=job["instance"],
        model_sha256=str(model["sha256"]).lower(),
        model_url=str(model["artifact_url"]),
        max_partitions=int(spec.max_partitions),
        input_spec=dict(input_spec) if input_spec else None,
        output_names=outputs,
        microservice=view,
        model_name=str(model.get("name") or spec.name),
        model_version=model.get("version"),
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
    from ml_scheduler.extract import extract_partitions
    from ml_scheduler.scheduler import MlScheduler

    result = MlScheduler(profile).schedule(graph, build_snapshot(nodes), microservice, cost_model)
    reasons = {str(k): str(v) for k, v in (result.reasons or {}).items()}
    if not result.schedulable and result.message:
        reasons.setdefault("*", result.message)
    common = {"input_names": tuple(graph.input_names), "output_names": tuple(graph.output_names),
              "predicted": result.predicted, "explanation": result.explanation, "message": result.message}
    if not result.schedulable:
        return PlanOutcome(False, result.strategy, reasons=reasons, **common)
    partitions = list(extract_partitions(model, graph, list(result.positions)))
    if len(partitions) != len(result.node_ids):
        raise ValueError(f"scheduler gave {len(result.node_ids)} nodes for {len(partitions)} partitions")
    relay = result.source_node_id if result.source_node_id not in (None, result.node_ids[0]) else None
    return PlanOutcome(True, result.strategy, partitions, [str(n) for n in result.node_ids], reasons,
                       relay_node_id=relay, **common)


def input_spec_for(request: JobRequest, input_names: Sequence[str]) -> dict[str, Any]:
    """The placement's ``input``: the SLA/registry spec, else the graph's first input name."""
    if request.input_spec:
        spec = request.input_spec
        return {"name": str(spec.get("name") or (input_names[0] if input_names else "input")),
                "shape": list(spec.get("shape") or []), "dtype": str(spec.get("dtype") or "float32")}
    return {"name": input_names[0] if input_names else "input", "shape": [], "dtype": "float32"}


def build_placement(
    deployment_id: str,
    generation: int,
    strategy: str,
    input_spec: Mapping[str, Any],
    outputs: Sequence[str],
    partitions: Sequence[Any],
    node_ids: Sequence[str],
    nodes_by_id: Mapping[str, Mapping[str, Any]],
    predicted: Mapping[str, Any] | None = None,
    relay_node_id: str | None = None,
) -> dict[str, Any]:
    """The placement document of docs/contracts.md (all stages start PENDING).

    With ``predicted`` (the scheduler's plan summary) each stage carries its predicted
    compute and inbound transfer ms, and the placement its predicted latency, throughput
    and energy. With ``relay_node_id``, ``relay`` describes the entry stage on that node.
    """
    predicted_stages = {int(s["index"]): s for s in (predicted or {}).get("stages", [])}
    stages = []
    for part, node_id in zip(partitions, node_ids):
        node = nodes_by_id[node_id]
        index = int(part.index)
        stage = {
            "index": index,
            "node_id": node_id,
            "node_name": node.get("name"),
            "profile": (node.get("telemetry") or {}).get("profile") or node.get("profile"),
            "endpoint": node.get("data_endpoint"),
            "stage_key": stage_key(deployment_id, index),
            "inputs": list(part.inputs),
            "outputs": list(part.outputs),
            "flops": int(part.flops),
            "param_bytes": int(part.param_bytes),
            "cut_bytes": int(part.cut_bytes),
            "sha256": part.sha256,
            "state": "PENDING",
        }
        if index in predicted_stages:
            stage["predicted_compute_ms"] = predicted_stages[index]["compute_ms"]
            stage["predicted_transfer_in_ms"] = predicted_stages[index]["transfer_in_ms"]
        stages.append(stage)
    relay = None
    if relay_node_id is not None and stages:
        node = nodes_by_id[relay_node_id]
        relay = {"index": RELAY_STAGE, "node_id": relay_node_id, "node_name": node.get("name"),
                 "endpoint": node.get("data_endpoint"), "stage_key": stage_key(deployment_id, RELAY_STAGE),
                 "inputs": list(stages[0]["inputs"]), "state": "PENDING"}
    entry = relay or (stages[0] if stages else None)
    placement = {
        "deployment_id": deployment_id,
        "generation": generation,
        "strategy": strategy,
        "input": dict(input_spec),
        "outputs": list(outputs),
        "entry": {"node_id": entry["node_id"], "endpoint": entry["endpoint"], "stage_key": entry["stage_key"]}
        if entry else None,
        "stages": stages,
        "relay": relay,
    }
    if predicted:
        placement["predicted"] = {k: v for k, v in predicted.items() if k != "stages"}
    return placement


def deploy_commands(placement: Mapping[str, Any], root_url: str) -> list[tuple[str, DeployCommand]]:
    """One (node_id, DeployCommand) per stage; stage i's ``next`` is stage i+1, the last has none.
    A relay entry stage (no artifact) forwards the raw inputs to stage 0."""
    stages = sorted(placement["stages"], key=lambda s: s["index"])
    commands = []
    for i, stage in enumerate(stages):
        following = stages[i + 1] if i + 1 < len(stages) else None
        nxt = NextStage(following["node_id"], following["endpoint"], following["stage_key"]) if following else None
        commands.append((stage["node_id"], DeployCommand(
            deployment_id=placement["deployment_id"],
            stage=int(stage["index"]),
            artifact_url=artifact_url(root_url, stage["sha256"]),
            sha256=stage["sha256"],
            inputs=list(stage["inputs"]),
            outputs=list(stage["outputs"]),
            next=nxt,
            generation=int(placement["generation"]),
        )))
    relay = placement.get("relay")
    if relay and stages:
        first = stages[0]
        commands.insert(0, (relay["node_id"], DeployCommand(
            deployment_id=placement["deployment_id"], stage=RELAY_STAGE, artifact_url="", sha256="",
            inputs=list(relay["inputs"]), outputs=list(relay["inputs"]),
            next=NextStage(first["node_id"], first["endpoint"], first["stage_key"]),
            generation=int(placement["generation"]), relay=True)))
    return commands


def stale_stages(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> list[tuple[str, int]]:
    """(node_id, stage) of an old placement not reused by the new one, to delete after a re-plan.

    Stage keys carry no generation, so a stage index that lands on the same node again was
    replaced in place by its new DeployCommand and must not be deleted.
    """
    if not old:
        return []
    def all_stages(placement: Mapping[str, Any]) -> list[Mapping[str, Any]]:
        return [*placement.get("stages", []), *([placement["relay"]] if placement.get("relay") else [])]

    kept = {(s["node_id"], int(s["index"])) for s in all_stages(new)}
    return [(s["node_id"], int(s["index"])) for s in all_stages(old)
            if (s["node_id"], int(s["index"])) not in kept]
