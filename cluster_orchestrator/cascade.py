"""A cascade deployment's edge stage: which node runs the small model, and the placement with it (pure).

A job whose SLA has ``model.cascade`` carries a :class:`~treeline_common.cascade.CascadeJob`
(the small model resolved by the root, the threshold to apply). The large model (the job's
own) is planned like any model; :func:`with_edge_stage` then adds ONE stage running the small
model whole on an edge node, makes it the deployment's entry, and records the rule
(``Placement.cascade`` and ``cascade_rule``). :func:`cluster_orchestrator.planning.deploy_commands`
turns that into the edge stage's deploy command, whose ``escalate_to`` is the large model's
first stage (the relay, when there is one): both are one deployment generation, so they share
the data key, and every re-plan of the large model re-sends the edge stage with the new
route (level-triggered, nothing to keep in step).

The edge node (:func:`edge_node`): the SLA's ``cascade.edge`` selector, else the model's
``source`` selector, else the slowest online node (lowest speed factor; ties by name) that
runs none of the large model's stages, else the slowest online node. Among several matches
the slowest wins too. Nothing online matching the selector is :class:`Unschedulable`, and so
is a small model whose input names differ from the large model's (the edge forwards the very
request it got).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import onnx

from cluster_orchestrator.planning import node_view_fields
from treeline_common.cascade import CASCADE_STAGE, CascadeJob, EdgeRule
from treeline_common.errors import Unschedulable
from treeline_common.jobs import Entry, Placement, StagePlacement
from treeline_common.messages import stage_key


def _matches(selector: Mapping[str, Any], view: Mapping[str, Any]) -> bool:
    if selector.get("node") is not None:
        return bool(view["name"] == selector["node"])
    return selector.get("label") is not None and selector["label"] in view["labels"]


def edge_node(nodes: Sequence[Mapping[str, Any]], large_nodes: frozenset[str],
              selector: Mapping[str, Any] | None) -> tuple[Mapping[str, Any], str]:
    """The node document the small model goes to and why (module docstring); Unschedulable if none."""
    online = [(node_view_fields(doc), doc) for doc in nodes if doc.get("online")]
    order = sorted(online, key=lambda pair: (pair[0]["speed_factor"], pair[0]["name"]))
    if selector:
        chosen = [pair for pair in order if _matches(selector, pair[0])]
        if not chosen:
            what = ", ".join(f"{k} {v!r}" for k, v in selector.items())
            raise Unschedulable(f"cascade: no online node matches the edge selector ({what})",
                                [{"path": "model.cascade.edge", "message": f"no online node with {what}"}])
        return chosen[0][1], f"the SLA's selector ({', '.join(f'{k}={v}' for k, v in selector.items())})"
    if not order:
        raise Unschedulable("cascade: no online node for the small model")
    apart = [pair for pair in order if pair[0]["node_id"] not in large_nodes]
    if apart:
        return apart[0][1], "the slowest online node running none of the large model's stages"
    return order[0][1], "the slowest online node (every node runs a stage of the large model)"


def selector_of(selector: Any) -> dict[str, str] | None:
    """A ``deployment_descriptors.NodeSelector`` (or None) as the ``{node}`` / ``{label}`` mapping."""
    if selector is None:
        return None
    return {"node": selector.node} if selector.node is not None else {"label": str(selector.label)}


def io_names(model_bytes: bytes) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The graph inputs (initializers excluded) and outputs of an ONNX model."""
    model = onnx.load_from_string(model_bytes)
    initializers = {i.name for i in model.graph.initializer}
    inputs = tuple(i.name for i in model.graph.input if i.name not in initializers)
    return inputs, tuple(o.name for o in model.graph.output)


def with_edge_stage(placement: Placement, cascade: CascadeJob, small_model: bytes,
                    nodes: Sequence[Mapping[str, Any]],
                    source: Mapping[str, Any] | None = None) -> tuple[Placement, dict[str, Any]]:
    """``placement`` with the small model's edge stage as its entry, and the explanation's
    ``cascade`` section (module docstring). ``source``: the SLA's ``model.source`` selector."""
    inputs, outputs = io_names(small_model)
    wanted = tuple(spec["name"] for spec in placement.inputs) or inputs
    if set(inputs) != set(wanted):
        raise Unschedulable("cascade: the small model's inputs differ from the large model's", [
            {"path": "model.cascade.small",
             "message": f"inputs {list(inputs)}; the large model takes {list(wanted)}"}])
    node, why = edge_node(nodes, placement.node_ids(), cascade.edge or source)
    view = node_view_fields(node)
    key = stage_key(placement.deployment_id, CASCADE_STAGE, placement.generation)
    edge = StagePlacement(index=CASCADE_STAGE, node_id=view["node_id"], node_name=view["name"],
                          profile=view["profile"], endpoint=str(node.get("data_endpoint") or ""),
                          stage_key=key, inputs=inputs, outputs=outputs, sha256=cascade.small_sha256)
    explanation = {"small": f"{cascade.small_name} v{cascade.small_version}", "edge_node": view["name"],
                   "edge_why": why, "threshold": cascade.threshold, "confidence": cascade.confidence,
                   **({"calibration": cascade.calibration} if cascade.calibration else {})}
    rule = EdgeRule(cascade.threshold, cascade.confidence)
    return dataclasses.replace(placement, cascade=edge, cascade_rule=rule,
                               entry=Entry(edge.node_id, edge.endpoint, edge.stage_key)), explanation
