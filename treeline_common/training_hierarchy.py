"""Hierarchical federated learning (FLOps-style): the SLA block and the job roles, defined once.

An SLA ``training`` block may carry ``hierarchical: {"cluster_rounds": K, "min_clusters": M}``
(absent: flat training, one Flower server per job). With it, the service's ``rounds`` are the
*global* rounds of a root aggregator (a Flower server with the SLA's strategy, evaluating on its
node's held-out split and exporting the result as the flat server does); its Flower clients are
one *cluster aggregator* per participating cluster, each of which, when the root asks it to fit,
runs ``K`` rounds of FedAvg with its own cluster's local clients and answers with their
aggregate. Only parameters travel: local clients -> cluster aggregator -> root aggregator.

The root orchestrator gives such a service one instance of role ``root`` (the root aggregator:
server only, no local clients, ``min_clients`` = ``min_clusters``) and one of role ``cluster``
per participating cluster; :class:`TrainingPart` travels in the
:class:`~treeline_common.jobs.JobRequest` so that a cluster knows which part it runs.

Not supported in hierarchical mode (refused at ``training.hierarchical``): client-side
differential privacy (the cluster aggregators would have to clip; server-side DP at the root
aggregator works unchanged).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

ROLE_ROOT = "root"
ROLE_CLUSTER = "cluster"
PART_ROLES = (ROLE_ROOT, ROLE_CLUSTER)
MAX_CLUSTER_ROUNDS = 100


class HierarchyError(ValueError):
    """A bad ``hierarchical`` block; ``path`` is relative to it (``cluster_rounds``, or '')."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}" if path else message)
        self.path = path
        self.message = message


@dataclass(frozen=True)
class HierarchySpec:
    """``cluster_rounds``: local FedAvg rounds a cluster aggregator runs per global round;
    ``min_clusters``: participating clusters needed to start (and per global round)."""

    cluster_rounds: int = field(default=1, metadata={"min": 1, "max": MAX_CLUSTER_ROUNDS})
    min_clusters: int = field(default=2, metadata={"min": 1})


def parse_hierarchy(raw: Any) -> HierarchySpec | None:
    """The ``hierarchical`` block (None when absent); HierarchyError naming the field."""
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise HierarchyError("", "must be an object like {\"cluster_rounds\": 1, \"min_clusters\": 2}")
    unknown = sorted(set(raw) - {"cluster_rounds", "min_clusters"})
    if unknown:
        raise HierarchyError(str(unknown[0]), "is not a field of hierarchical (it takes: cluster_rounds, "
                                              "min_clusters)")
    values = {}
    bounds = (("cluster_rounds", 1, MAX_CLUSTER_ROUNDS, 1), ("min_clusters", 1, 1000, 2))
    for key, low, high, default in bounds:
        value = raw.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise HierarchyError(key, f"must be an integer in {low}..{high}, got {value!r}")
        values[key] = value
    return HierarchySpec(**values)


@dataclass(frozen=True)
class TrainingPart:
    """Root -> cluster, inside a JobRequest: which part of a hierarchical job this instance runs.

    ``role``: ``root`` (the root aggregator) or ``cluster`` (a cluster aggregator and its local
    clients); ``root_instance``: the service instance that runs the root aggregator (a cluster
    part asks the root for its address, ``GET /api/training/<service>/<root_instance>/aggregator``);
    ``clusters``: the participating clusters' names (lineage; the root aggregator expects that
    many Flower clients).
    """

    role: str = field(metadata={"pattern": "root|cluster", "pattern_message": "must be 'root' or 'cluster'"})
    root_instance: int = field(metadata={"min": 0})
    clusters: tuple[str, ...] = ()
