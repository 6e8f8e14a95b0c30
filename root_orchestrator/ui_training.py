"""The training section of a deployment page in the web UI (pure: plain documents in, a dict out).

An ``ml-training`` service (:data:`treeline_common.training.TRAINING_VIRTUALIZATION`) has no
stages to draw; what an operator wants to see is where Flower runs, how the rounds go and what
was registered. All of it is in the deployment's events, as the cluster's training worker
records them (``cluster_orchestrator.training_job`` / ``training_runner``):

- ``training_placed``: ``explanation`` = ``{server, clients, unschedulable, rejected: [{node_id,
  reason, message}]}`` (:meth:`cluster_orchestrator.training.TrainingPlacement.explanation`);
  a restarted job is placed again: the newest one wins. Before it (or without it) the
  instance's ``explanation`` is used when it has that shape (an unschedulable job has no event);
- ``training_round``: ``round`` (0 = the starting model's evaluation), ``accuracy`` and ``loss``
  on the server's held-out split (None when not evaluated), ``clients`` that took part and,
  with differential privacy, ``epsilon``; a round reported twice (a resumed server) keeps its
  newest report;
- ``training_client_lost``: ``node_id`` and ``message``;
- ``training_registered``: ``model`` = ``"name:version"`` of the registered result.

Node ids are shown with the names in ``node_names`` (the fleet's; an unknown id stays the id).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from treeline_common.training import TRAINING_VIRTUALIZATION

Doc = Mapping[str, Any]
PLACEMENT_KEYS = ("server", "clients", "rejected")


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def is_training(service: Doc) -> bool:
    """Whether ``service`` (a root service document) is an ``ml-training`` service."""
    return service.get("virtualization") == TRAINING_VIRTUALIZATION


def _node(node_id: Any, names: Mapping[str, str]) -> dict[str, Any]:
    key = str(node_id)
    return {"node_id": key, "name": names.get(key) or key}


def placement_of(explanation: Doc | None, names: Mapping[str, str]) -> dict[str, Any] | None:
    """``{server, clients, rejected, unschedulable}`` with names, or None when ``explanation``
    is not a training placement's (it has none of ``server``, ``clients``, ``rejected``)."""
    if not isinstance(explanation, Mapping) or not any(k in explanation for k in PLACEMENT_KEYS):
        return None
    server = explanation.get("server")
    clients = [c for c in explanation.get("clients") or [] if isinstance(c, (str, int))]
    rejected = [{**_node(r.get("node_id"), names), "reason": str(r.get("reason") or ""),
                 "message": str(r.get("message") or "")}
                for r in explanation.get("rejected") or [] if isinstance(r, Mapping)]
    return {"server": _node(server, names) if server else None,
            "clients": [_node(c, names) for c in clients], "rejected": rejected,
            "unschedulable": str(explanation.get("unschedulable") or "")}


def rounds_of(events: Sequence[Doc]) -> list[dict[str, Any]]:
    """One row per round number, in round order: ``{round, accuracy, loss, clients, epsilon, ts}``
    (the newest report of a round wins; events without an integer ``round`` are skipped)."""
    by_round: dict[int, dict[str, Any]] = {}
    for e in events:
        number = e.get("round")
        if e.get("kind") != "training_round" or isinstance(number, bool) or not isinstance(number, int):
            continue
        clients = _number(e.get("clients"))
        by_round[number] = {"round": number, "accuracy": _number(e.get("accuracy")),
                            "loss": _number(e.get("loss")),
                            "clients": None if clients is None else int(clients),
                            "epsilon": _number(e.get("epsilon")), "ts": _number(e.get("ts"))}
    return [by_round[k] for k in sorted(by_round)]


def result_of(events: Sequence[Doc]) -> dict[str, Any] | None:
    """The newest ``training_registered`` event's version: ``{model, name, version}`` (``version``
    None when ``model`` has no ``:<int>`` suffix), or None when nothing was registered."""
    for e in reversed(events):
        if e.get("kind") == "training_registered" and e.get("model"):
            label = str(e["model"])
            name, _, version = label.rpartition(":")
            if name and version.isdigit():
                return {"model": label, "name": name, "version": int(version)}
            return {"model": label, "name": label, "version": None}
    return None


def _spec(service: Doc) -> dict[str, Any]:
    block = (service.get("microservice") or {}).get("training") or {}
    if not isinstance(block, Mapping):
        return {}
    privacy = block.get("differential_privacy")
    return {"strategy": block.get("strategy") or "fedavg", "rounds": block.get("rounds"),
            "min_clients": block.get("min_clients"), "data": block.get("data"), "model": block.get("model"),
            "trainable": block.get("trainable") or "all",
            "differential_privacy": dict(privacy) if isinstance(privacy, Mapping) else None}


def training_view(service: Doc, events: Sequence[Doc], names: Mapping[str, str],
                  instance_explanation: Doc | None = None) -> dict[str, Any] | None:
    """The ``training`` section of ``GET /api/ui/service/<id>`` (module docstring), or None for a
    service that is not an ``ml-training`` one. ``events``: the service's, oldest first."""
    if not is_training(service):
        return None
    placed = [e for e in events
              if e.get("kind") == "training_placed" and isinstance(e.get("explanation"), Mapping)]
    placement = placement_of(placed[-1]["explanation"] if placed else instance_explanation, names)
    rounds = rounds_of(events)
    lost = [{**_node(e.get("node_id"), names), "message": str(e.get("message") or ""),
             "ts": _number(e.get("ts"))} for e in events if e.get("kind") == "training_client_lost"]
    spec = _spec(service)
    trained = [r for r in rounds if r["round"] > 0]
    return {"spec": spec, "placement": placement, "rounds": rounds, "clients_lost": lost,
            "progress": {"round": trained[-1]["round"] if trained else 0, "of": spec.get("rounds")},
            "result": result_of(events)}
