"""SimpleScheduler: the deliberately simple baseline placement (filter, balance, assign).

Why it exists: the walking skeleton needs a placement that is correct and explainable before
any cost model exists, and later strategies are measured against it. Steps:

1. *Filter*: offline nodes and nodes without compute (``speed_factor <= 0``) are dropped, each
   with a named reason.
2. *Cut*: ``k = min(max_partitions, feasible nodes, ops)`` FLOP-balanced partitions
   (:func:`ml_scheduler.partition.balanced_cuts`).
3. *Assign*: partitions by decreasing FLOPs onto nodes by decreasing ``speed_factor`` (the
   biggest partition gets the fastest node), skipping any node whose ``memory_limit_mb``
   cannot hold the partition's weights. If that greedy pass fails, a bipartite matching in the
   same preference order is tried; if no assignment exists, ``k`` is lowered by one and step 2
   repeats. If even ``k = 1`` fails, the result is unschedulable — a result, not an exception.

Every node that is not used gets a reason ``"<code>: <detail>"`` with ``<code>`` one of the
``REASON_*`` constants. Pure and deterministic: ties are broken by ``node_id``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from ml_scheduler.graph import ModelGraph
from ml_scheduler.partition import balanced_cuts
from ml_scheduler.snapshot import ClusterSnapshot, NodeView

logger = logging.getLogger(__name__)

STRATEGY = "flops-balanced"
REASON_OFFLINE = "offline"
REASON_NO_COMPUTE = "no_compute"
REASON_INSUFFICIENT_MEMORY = "insufficient_memory"
REASON_NOT_SELECTED = "not_selected"
_MIB = 1024 * 1024


def reason_code(reason: str) -> str:
    """The ``REASON_*`` code at the start of a reason string."""
    return reason.split(":", 1)[0]


@dataclass(frozen=True)
class PlacementResult:
    """A plan (or why there is none). ``node_ids[i]`` runs the partition ending at ``positions[i]``.

    ``reasons`` explains every node that was filtered or not chosen; ``message`` summarises an
    unschedulable result (empty when schedulable).
    """

    schedulable: bool
    positions: list[int]
    node_ids: list[str]
    reasons: dict[str, str]
    strategy: str = STRATEGY
    message: str = ""


def _mb(nbytes: float) -> str:
    return f"{nbytes / _MIB:.2f} MB"


def _fits(node: NodeView, weight_bytes: float) -> bool:
    return node.memory_limit_mb is None or weight_bytes <= node.memory_limit_mb * _MIB


def _assign(weights: Sequence[float], order: Sequence[int], nodes: Sequence[NodeView]) -> list[int] | None:
    """Node index per partition (``nodes`` fastest first, ``order`` biggest partition first).

    Greedy first (biggest partition -> fastest node that fits); if it strands a partition, a
    maximum bipartite matching (Kuhn) with the same preference order. None if nothing fits.
    """
    owner: dict[int, int] = {}  # node index -> partition
    greedy: dict[int, int] = {}
    for part in order:
        free = (i for i in range(len(nodes)) if i not in owner and _fits(nodes[i], weights[part]))
        choice = next(free, None)
        if choice is None:
            break
        owner[choice] = part
        greedy[part] = choice
    else:
        return [greedy[p] for p in range(len(weights))]

    owner.clear()

    def augment(part: int, visited: set[int]) -> bool:
        for i in range(len(nodes)):
            if i in visited or not _fits(nodes[i], weights[part]):
                continue
            visited.add(i)
            if i not in owner or augment(owner[i], visited):
                owner[i] = part
                return True
        return False

    for part in order:
        if not augment(part, set()):
            return None
    assignment = {part: i for i, part in owner.items()}
    return [assignment[p] for p in range(len(weights))]


@dataclass(frozen=True)
class SimpleScheduler:
    """FLOP-balanced cuts, biggest partition on the fastest node, weights must fit in memory.

    ``memory_factor`` scales a partition's weight bytes before the memory check (1.0 = weights
    only, as the contract states; raise it to leave room for runtime overhead).
    """

    memory_factor: float = 1.0
    name: str = field(default=STRATEGY)

    def place(self, graph: ModelGraph, snapshot: ClusterSnapshot, max_partitions: int) -> PlacementResult:
        """Plan ``graph`` onto ``snapshot``'s nodes with at most ``max_partitions`` stages."""
        if max_partitions < 1:
            raise ValueError(f"max_partitions must be >= 1, got {max_partitions}")
        reasons: dict[str, str] = {}
        candidates: list[NodeView] = []
        for node in snapshot.nodes:
            if not node.online:
                reasons[node.node_id] = f"{REASON_OFFLINE}: node {node.name} is not online"
            elif node.speed_factor <= 0:
                reasons[node.node_id] = f"{REASON_NO_COMPUTE}: speed_factor {node.speed_factor} <= 0"
            else:
                candidates.append(node)
        candidates.sort(key=lambda node: (-node.speed_factor, node.node_id))
        if not candidates or not graph.ops:
            message = "no online node with compute" if graph.ops else "model has no ops"
            return PlacementResult(False, [], [], reasons, self.name, message)

        smallest_need: float | None = None
        for k in range(min(max_partitions, len(candidates), len(graph.ops)), 0, -1):
            positions = balanced_cuts(graph, k)
            if len(positions) != k - 1:  # fewer allowed cut positions than k-1 (graph.uncuttable)
                continue
            ranges = graph.ranges(positions)
            weights = [graph.range_param_bytes(a, b) * self.memory_factor for a, b in ranges]
            flops = [graph.range_flops(a, b) for a, b in ranges]
            order = sorted(range(k), key=lambda p: (-flops[p], p))
            smallest_need = min(min(weights), smallest_need if smallest_need is not None else min(weights))
            assignment = _assign(weights, order, candidates)
            if assignment is None:
                logger.debug("k=%d: no assignment fits memory (weights %s)", k, weights)
                continue
            node_ids = [candidates[i].node_id for i in assignment]
            used = set(assignment)
            for i, node in enumerate(candidates):
                if i in used:
                    continue
                if not any(_fits(node, w) for w in weights):
                    reasons[node.node_id] = (
                        f"{REASON_INSUFFICIENT_MEMORY}: memory {node.memory_limit_mb} MB "
                        f"< smallest partition's weights {_mb(min(weights))}"
                    )
                else:
                    reasons[node.node_id] = (f"{REASON_NOT_SELECTED}: {k} partition(s) placed on faster or "
                                             f"fitting nodes")
            logger.debug("placed k=%d positions=%s nodes=%s", k, positions, node_ids)
            return PlacementResult(True, positions, node_ids, reasons, self.name)

        need = smallest_need or 0.0
        for node in candidates:
            if not _fits(node, need):
                reasons[node.node_id] = (f"{REASON_INSUFFICIENT_MEMORY}: memory {node.memory_limit_mb} MB < "
                                         f"smallest planned partition's weights {_mb(need)}")
            else:
                reasons[node.node_id] = f"{REASON_NOT_SELECTED}: no assignment fits every partition's weights"
        message = "no assignment of partitions to nodes fits every partition's weights in memory"
        return PlacementResult(False, [], [], reasons, self.name, message)
