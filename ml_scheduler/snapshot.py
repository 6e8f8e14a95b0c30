"""Immutable view of a cluster's nodes, taken once per scheduling cycle.

Why frozen: a plan is computed from one consistent snapshot (kube-scheduler style); the
orchestrator builds it from its node table and telemetry, and the scheduler can neither
mutate it nor observe it changing half-way through a decision.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class NodeView:
    """What the scheduler may know about one worker node.

    ``speed_factor``: relative compute speed (1.0 = reference host). ``memory_limit_mb``: memory
    the node grants to model weights; ``None`` means unknown and is treated as unlimited.
    ``battery_percent`` is ``None`` for mains-powered nodes.
    """

    node_id: str
    name: str
    profile: str
    online: bool
    speed_factor: float
    memory_limit_mb: float | None
    arch: str = ""
    accelerators: tuple[str, ...] = ()
    battery_percent: float | None = None
    labels: tuple[str, ...] = ()


@dataclass(frozen=True)
class ClusterSnapshot:
    """All nodes the cluster knows, online or not, in a stable order."""

    nodes: tuple[NodeView, ...]

    def online_nodes(self) -> tuple[NodeView, ...]:
        return tuple(node for node in self.nodes if node.online)

    def by_id(self, node_id: str) -> NodeView:
        """The node with ``node_id``; KeyError if absent."""
        for node in self.nodes:
            if node.node_id == node_id:
                return node
        raise KeyError(node_id)
