"""Which deployments a node answers the Open Inference Protocol for, and what it checks first.

The entry node's v2 endpoint (:mod:`node_engine.v2_http`) serves every deployment whose
**entry** stage this node holds: the stage marked ``entry`` in its deploy command (the relay,
else stage 0), or, on a cluster that gives no data keys (then no stage is marked), a relay or
a stage 0. Several generations may live side by side during a re-plan (make before break): the
newest one answers.

Names (``/v2/models/<name>``): the deployment id (``<service id>-<instance>``), or the service
id when exactly one deployment whose entry is here has it. A name this node holds only inner
stages of is :class:`NotHere` (the HTTP layer redirects to the cluster's stable address); any
other name is :class:`~treeline_common.errors.NotFound`.

Callers (the same rule as the cluster's gateway, :class:`cluster_orchestrator.inference_v2.V2Gateway`,
and the data plane's, :mod:`node_engine.data_plane.security`): an entry deployed with a caller
key (its SLA makes callers sign) needs ``Authorization: Bearer <caller key>``, the key its owner
reads at the root; the request then travels signed with it. An open service needs nothing.

Everything here is pure over a :class:`~node_engine.stages.StageTable` snapshot: no sockets.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from node_engine.stages import LoadedStage, StageTable
from treeline_common.errors import InvalidInput, NotFound, Unauthorized
from treeline_common.inference_v2 import bearer_matches, tensor_metadata


class NotHere(NotFound):
    """This node holds the deployment but not its entry: callers belong at the stable address
    (a 404 where no cluster URL is known)."""


def is_entry(stage: LoadedStage) -> bool:
    """Whether callers send to ``stage`` (see the module docstring)."""
    if stage.access.data_key:
        return stage.access.entry
    return stage.relay or stage.index == 0


def entries(stages: StageTable) -> dict[str, LoadedStage]:
    """Deployment id -> its entry stage here (newest generation; a relay before stage 0)."""
    chosen: dict[str, LoadedStage] = {}
    for stage in stages.all():
        if not is_entry(stage):
            continue
        current = chosen.get(stage.deployment_id)
        if current is None or (stage.generation, stage.relay) > (current.generation, current.relay):
            chosen[stage.deployment_id] = stage
    return chosen


def service_id_of(deployment_id: str) -> str:
    """``<service id>`` of ``<service id>-<instance>`` (the id itself when it has no instance)."""
    head, sep, _ = deployment_id.rpartition("-")
    return head if sep else deployment_id


def find(stages: StageTable, name: str) -> LoadedStage:
    """The entry stage ``name`` means here; NotHere or NotFound naming ``name`` otherwise."""
    here = entries(stages)
    if name in here:
        return here[name]
    by_service = [stage for dep, stage in here.items() if service_id_of(dep) == name]
    if len(by_service) == 1:
        return by_service[0]
    if len(by_service) > 1:
        raise InvalidInput(f"model name {name!r} is ambiguous on this node",
                           [{"path": "name", "message": "use <service id>-<instance>: "
                             + ", ".join(sorted(s.deployment_id for s in by_service))}])
    if any(name in (s.deployment_id, service_id_of(s.deployment_id)) for s in stages.all()):
        raise NotHere(f"this node does not take requests for {name!r}: its entry is on another node",
                      [{"path": "name", "message": "not the entry here"}])
    raise NotFound(f"no model {name!r} on this node", [{"path": "name", "message": "unknown model"}])


def caller_key(stage: LoadedStage) -> str:
    """The hex caller key requests to ``stage`` are signed with ("": an open service)."""
    return stage.access.caller_key.hex() if stage.access.entry else ""


def check_caller(stage: LoadedStage, authorization: str) -> None:
    """Unauthorized unless the service lets anybody call or ``authorization`` shows its caller key."""
    expected = caller_key(stage)
    if not expected:
        return
    if not bearer_matches(authorization, expected):
        raise Unauthorized("this service's callers must sign: send Authorization: Bearer <caller key>",
                           [{"path": "Authorization", "message": "missing or wrong caller key"}])


def _local_chain(stages: StageTable, entry: LoadedStage) -> list[LoadedStage]:
    """``entry`` and the stages after it that run on this node too (they hold the same table)."""
    chain = [entry]
    while chain[-1].next is not None and len(chain) < 64:
        following = stages.get(chain[-1].next.stage_key)
        if following is None:
            break
        chain.append(following)
    return chain


def _signature(stage: LoadedStage) -> dict[str, list[dict[str, Any]]] | None:
    read = getattr(stage.session, "signature", None)  # a relay (or a test's fake) has none
    return read() if callable(read) and not stage.relay else None


def input_specs(stages: StageTable, entry: LoadedStage) -> list[dict[str, Any]] | None:
    """``[{name, dtype, shape}]`` the deployment takes, from the first model stage held here
    (through a relay); None when no session here declares them."""
    for stage in _local_chain(stages, entry):
        signature = _signature(stage)
        if signature is not None:
            return signature["inputs"]
        if not stage.relay:
            return None
    return None


def _v2_tensors(specs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    try:
        return tensor_metadata(specs)
    except InvalidInput:  # a type the protocol has no name for (e.g. ONNX strings)
        return [{"name": str(s.get("name")), "datatype": "BYTES", "shape": [-1]} for s in specs]


def metadata(stages: StageTable, name: str, entry: LoadedStage) -> dict[str, Any]:
    """``GET /v2/models/<name>``: the inputs from the entry's session, the outputs from the last
    stage when the whole chain runs here (else ``[]``: the cluster's metadata has them, with the
    model's registry version; the node reports ``versions: []`` and its plan ``generation``)."""
    chain = _local_chain(stages, entry)
    inputs = input_specs(stages, entry)
    last = chain[-1]
    signature = _signature(last) if last.next is None else None
    outputs = [s for s in signature["outputs"] if not last.outputs or s["name"] in last.outputs] \
        if signature is not None else []
    # the node knows its plan generation, not the registry version: no version rather than a wrong one
    return {"name": name, "versions": [], "platform": "onnxruntime_onnx", "generation": entry.generation,
            "deployment_id": entry.deployment_id,
            "inputs": _v2_tensors(inputs) if inputs is not None else
            [{"name": n, "datatype": "", "shape": []} for n in entry.outputs],
            "outputs": _v2_tensors(outputs)}
