"""Placing a federated training job on a cluster's nodes (pure; decide, then commit).

Given a frozen snapshot of the nodes (:func:`cluster_orchestrator.planning.build_snapshot`) and
the job's :class:`~treeline_common.training.TrainingSpec`, :func:`place_training` returns:

- ``clients``: every node that passes the filters AND carries the data label (``data:digits``):
  one Flower client each; the data stays where it is, so a node without the label never trains;
- ``server``: the node that runs the Flower server (the aggregator), chosen among the nodes that
  pass the filters (holding data or not) by, in order: mains power over battery, speed factor,
  memory headroom, low CPU load, then node id (deterministic);
- ``rejected``: node id -> ``(reason code, message)`` for every node left out, with the reason
  constants of the ML scheduler's filters (:mod:`ml_scheduler.plugins.filters`) plus
  :data:`REASON_NO_DATA`; the same explanation a model deployment gets.

Filters: online; train (:data:`REASON_NO_TRAIN_EXTRA`: the node advertised its capabilities,
:mod:`treeline_common.capabilities`, without ``train``; a node that did not advertise is kept);
memory (the SLA's ``memory`` MB against the node's limit); arch (the SLA's ``arch`` list);
battery (a ``battery`` constraint's ``min_percent``: nodes below it are not selected). Fewer
eligible clients than ``min_clients`` is a result (``unschedulable`` set, with the reasons),
never an exception; its text and ``sla_field`` name the SLA field to change: ``training.data``
when no node at all carries the label (with the ``data:`` labels seen), ``training.min_clients``
when too few of those carrying it pass the filters.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ml_scheduler.plugins.filters import (
    REASON_ARCH,
    REASON_BATTERY,
    REASON_INSUFFICIENT_MEMORY,
    REASON_OFFLINE,
)
from ml_scheduler.snapshot import ClusterSnapshot, NodeView
from treeline_common.capabilities import EVAL, TRAIN
from treeline_common.training import TrainingSpec

REASON_NO_DATA = "no_data"
# The SLA fields an unschedulable placement names (relative to the microservice, as the SLA's paths are).
FIELD_DATA = "training.data"
FIELD_MIN_CLIENTS = "training.min_clients"
REASON_NO_TRAIN_EXTRA = "no_train_extra"  # the node advertised capabilities without ``train``


@dataclass(frozen=True)
class TrainingRequirements:
    """What the microservice asks of every node it uses (read by :func:`requirements_of`)."""

    memory_mb: float = 0.0
    arch: tuple[str, ...] = ()
    battery_min_percent: float | None = None


def requirements_of(microservice: Mapping[str, Any]) -> TrainingRequirements:
    """``memory``, ``arch`` and the ``battery`` constraint's ``min_percent`` of an SLA microservice."""
    battery = None
    for constraint in microservice.get("constraints") or ():
        if isinstance(constraint, Mapping) and constraint.get("type") == "battery":
            battery = float(constraint.get("min_percent", 0.0))
    return TrainingRequirements(float(microservice.get("memory") or 0.0),
                                tuple(str(a) for a in microservice.get("arch") or ()), battery)


@dataclass(frozen=True)
class TrainingPlacement:
    """The decision; ``unschedulable`` non-empty means nothing should be started."""

    server: str = ""
    clients: tuple[str, ...] = ()
    rejected: dict[str, tuple[str, str]] = field(default_factory=dict)
    unschedulable: str = ""
    sla_field: str = ""  # the SLA field an unschedulable placement is due to (``training.min_clients``, ...)

    def explanation(self) -> dict[str, Any]:
        """JSON-able explanation for the API/UI: the choice and every rejected node's reason."""
        rejected = [{"node_id": n, "reason": r, "message": m} for n, (r, m) in sorted(self.rejected.items())]
        return {"server": self.server, "clients": list(self.clients), "unschedulable": self.unschedulable,
                "field": self.sla_field, "rejected": rejected}


def _filter(node: NodeView, needs: TrainingRequirements) -> tuple[str, str] | None:
    """The first filter ``node`` fails, or None."""
    if not node.online:
        return REASON_OFFLINE, f"node {node.name} is not online"
    if node.capabilities is not None and TRAIN not in node.capabilities:
        return (REASON_NO_TRAIN_EXTRA, f"node {node.name} cannot train: its node engine has no training "
                                       "extra (flwr, torch; pip install 'treeline[train]')")
    if needs.arch and node.arch not in needs.arch:
        return REASON_ARCH, f"arch {node.arch or '(unknown)'} not in allowed {list(needs.arch)}"
    if needs.memory_mb and node.memory_limit_mb is not None and node.memory_limit_mb < needs.memory_mb:
        return (REASON_INSUFFICIENT_MEMORY,
                f"needs {needs.memory_mb:g} MB, node {node.name} offers {node.memory_limit_mb:g} MB")
    if (needs.battery_min_percent is not None and node.battery_percent is not None
            and node.battery_percent < needs.battery_min_percent):
        return (REASON_BATTERY, f"battery {node.battery_percent:g}% below the SLA's minimum "
                                f"{needs.battery_min_percent:g}%: not selected for training")
    return None


def _server_rank(node: NodeView) -> tuple[Any, ...]:
    """Best first: a node holding the held-out split (``treeline:eval``: the server measures
    accuracy there), mains power, speed, memory headroom, low load, id."""
    headroom = node.memory_available_mb if node.memory_available_mb is not None else float("inf")
    return (EVAL not in (node.capabilities or ()), node.battery_percent is not None, -node.speed_factor,
            -headroom, node.cpu_percent, node.node_id)


def place_training(snapshot: ClusterSnapshot, spec: TrainingSpec,
                   needs: TrainingRequirements = TrainingRequirements()) -> TrainingPlacement:
    """Choose the server and the clients (see the module docstring). Pure and deterministic."""
    rejected: dict[str, tuple[str, str]] = {}
    eligible: list[NodeView] = []
    for node in snapshot.nodes:
        reason = _filter(node, needs)
        if reason is None:
            eligible.append(node)
        else:
            rejected[node.node_id] = reason
    clients = []
    for node in eligible:
        if spec.data in node.labels:
            clients.append(node.node_id)
        else:
            rejected[node.node_id] = (REASON_NO_DATA, f"node {node.name} has no label {spec.data}: "
                                                      "it can aggregate but holds no data")
    if not any(spec.data in node.labels for node in snapshot.nodes):
        seen = sorted({label for node in snapshot.nodes for label in node.labels
                       if label.startswith("data:")})
        return TrainingPlacement(rejected=rejected, sla_field=FIELD_DATA, unschedulable=(
            f"{FIELD_DATA}: no node carries label {spec.data}; labels seen: {', '.join(seen) or 'none'}"))
    if not eligible:
        return TrainingPlacement(rejected=rejected, unschedulable="no node passes the filters")
    if len(clients) < spec.min_clients:
        return TrainingPlacement(rejected=rejected, sla_field=FIELD_MIN_CLIENTS, unschedulable=(
            f"{len(clients)} node(s) with {spec.data} pass the filters; {FIELD_MIN_CLIENTS} is "
            f"{spec.min_clients}"))
    server = min(eligible, key=_server_rank)
    rejected.pop(server.node_id, None)  # it aggregates: not rejected, even without data
    return TrainingPlacement(server.node_id, tuple(sorted(clients)), rejected)


def place_aggregator(snapshot: ClusterSnapshot, needs: TrainingRequirements = TrainingRequirements()
                     ) -> TrainingPlacement:
    """A hierarchical job's root aggregator: a Flower server and no local clients (its clients are
    the clusters' aggregators), on the best node passing the filters (ranked as a flat server).
    Pure; unschedulable when no node passes."""
    rejected = {n.node_id: r for n in snapshot.nodes if (r := _filter(n, needs)) is not None}
    eligible = [n for n in snapshot.nodes if n.node_id not in rejected]
    if not eligible:
        return TrainingPlacement(rejected=rejected, unschedulable="no node passes the filters")
    return TrainingPlacement(min(eligible, key=_server_rank).node_id, (), rejected)


def server_host(doc: Mapping[str, Any]) -> str:
    """The host clients dial for a node's Flower server: its data endpoint's (``tcp://host:port``)."""
    endpoint = str(doc.get("data_endpoint") or "")
    host = endpoint.removeprefix("tcp://").rsplit(":", 1)[0]
    return host or "127.0.0.1"


def nodes_by_id(docs: Sequence[Mapping[str, Any]]) -> dict[str, Mapping[str, Any]]:
    return {str(d["node_id"]): d for d in docs}
