"""Immutable view of a cluster's nodes, taken once per scheduling cycle.

Why frozen: a plan is computed from one consistent snapshot (kube-scheduler style); the
orchestrator builds it from its node table and telemetry, and the scheduler can neither
mutate it nor observe it changing half-way through a decision.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import numpy as np

LINK_MEASURED, LINK_DECLARED = "measured", "declared"


@dataclass(frozen=True)
class LinkFigure:
    """A measured link from a node to ``peer`` (a node id): ``rtt_ms`` (ms), ``mbps`` (Mbit/s).

    ``source`` is how the node measured it: ``probe`` (active probe) or ``passive`` (real
    tensors); see ``treeline_common.messages.LinkReading``.
    """

    peer: str
    rtt_ms: float
    mbps: float
    source: str = "probe"


@dataclass(frozen=True)
class NodeView:
    """What the scheduler may know about one worker node.

    ``speed_factor``: relative compute speed (1.0 = reference host). ``memory_limit_mb``: memory
    the node grants to model weights; ``None`` means unknown and is treated as unlimited.
    ``battery_percent`` is ``None`` for mains-powered nodes.

    Device figures (declared by the node's profile, see ``treeline_common.profiles``):
    ``power_w`` drawn while computing, ``radio_nj_per_byte`` to send, the node's own
    ``uplink_mbps`` and ``link_rtt_ms``. ``cpu_percent`` and ``memory_available_mb`` are the
    latest telemetry (``None``: not reported). ``runtimes`` are the model runtimes the node
    can execute. Fields after ``labels`` have defaults so older constructors keep working.

    Measured links: ``links`` are the node's measured links to its peers (the cost model uses
    the one towards a stage's actual next node where there is one); ``link_figures`` says
    where ``uplink_mbps`` / ``link_rtt_ms`` come from: ``measured`` (the median of ``links``)
    or ``declared`` (the profile's figures).

    ``capabilities``: what the node advertised it can run (``("infer", "train")``, from its
    ``treeline:`` labels, :mod:`treeline_common.capabilities`); None: it did not say (unknown).
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
    power_w: float = 10.0
    radio_nj_per_byte: float = 20.0
    uplink_mbps: float = 1000.0
    link_rtt_ms: float = 0.5
    device_class: str = ""
    cpu_percent: float = 0.0
    memory_available_mb: float | None = None
    runtimes: tuple[str, ...] = ("onnxruntime",)
    emulated: bool = False
    links: tuple[LinkFigure, ...] = ()
    link_figures: str = LINK_DECLARED
    capabilities: tuple[str, ...] | None = None


def _index(keys_per_node: Iterable[tuple[str, ...]]) -> Mapping[str, tuple[int, ...]]:
    """``key -> increasing node indices`` carrying it (labels, accelerators, runtimes, names, ids).

    Tuples, not arrays: most keys (names, ids) hit one node, and 20,000 tiny arrays would
    dominate the cost of building the columns.
    """
    found: dict[str, list[int]] = {}
    for i, keys in enumerate(keys_per_node):
        for key in keys if len(keys) < 2 else dict.fromkeys(keys):
            found.setdefault(key, []).append(i)
    return MappingProxyType({key: tuple(idx) for key, idx in found.items()})


def _unique_index(keys: tuple[str, ...]) -> Mapping[str, tuple[int, ...]]:
    """``_index`` for one key per node (ids, names): a fast path when the keys are unique."""
    table = {key: (i,) for i, key in enumerate(keys)}
    if len(table) == len(keys):
        return MappingProxyType(table)
    return _index((key,) for key in keys)


def _frozen(array: np.ndarray) -> np.ndarray:
    array.setflags(write=False)
    return array


@dataclass(frozen=True, eq=False)
class NodeColumns:
    """The snapshot's nodes as read-only numpy columns, index ``i`` = ``snapshot.nodes[i]``.

    Why: filter and score plugins run once per plugin over every node (10,000 and more), so
    they need arrays, not a Python loop over ``NodeView``. Missing values are explicit:
    ``memory_mb`` is ``inf`` for "unlimited", ``battery`` and ``memory_available_mb`` are
    ``nan`` for "none / not reported". Set-valued fields (labels, accelerators, runtimes) and
    names are inverted indexes ``key -> node indices``; ``arch`` is a code into ``archs``.
    ``id_rank[i]`` is node ``i``'s position in ``node_id`` order, the deterministic tie-break.
    """

    node_ids: tuple[str, ...]
    names: tuple[str, ...]
    online: np.ndarray
    speed: np.ndarray
    memory_mb: np.ndarray
    memory_available_mb: np.ndarray
    battery: np.ndarray
    power_w: np.ndarray
    radio_nj_per_byte: np.ndarray
    uplink_mbps: np.ndarray
    link_rtt_ms: np.ndarray
    cpu_percent: np.ndarray
    emulated: np.ndarray
    arch: np.ndarray
    archs: tuple[str, ...]
    id_rank: np.ndarray
    by_id: Mapping[str, tuple[int, ...]]
    by_name: Mapping[str, tuple[int, ...]]
    by_label: Mapping[str, tuple[int, ...]]
    by_accelerator: Mapping[str, tuple[int, ...]]
    by_runtime: Mapping[str, tuple[int, ...]]

    @property
    def size(self) -> int:
        return len(self.node_ids)

    def mask(self, index: Mapping[str, tuple[int, ...]], keys: Iterable[str]) -> np.ndarray:
        """Boolean mask of nodes carrying ANY of ``keys`` in ``index`` (e.g. ``by_label``)."""
        out = np.zeros(self.size, dtype=bool)
        for key in keys:
            hits = index.get(key)
            if hits:
                out[list(hits)] = True
        return out

    def selector_mask(self, node: str | None, label: str | None) -> np.ndarray:
        """Nodes a ``NodeSelector``-like ``(node, label)`` matches: ``node`` by name or node id."""
        if node is not None:
            return self.mask(self.by_name, (node,)) | self.mask(self.by_id, (node,))
        return self.mask(self.by_label, () if label is None else (label,))

    @classmethod
    def of(cls, nodes: tuple[NodeView, ...]) -> NodeColumns:
        def floats(values: Iterable[float | None], missing: float) -> np.ndarray:
            return _frozen(np.array([missing if v is None else float(v) for v in values], dtype=float))

        archs = tuple(sorted({n.arch for n in nodes}))
        arch_code = {a: i for i, a in enumerate(archs)}
        ids = tuple(n.node_id for n in nodes)
        names = tuple(n.name for n in nodes)
        rank = np.empty(len(nodes), dtype=np.intp)
        rank[np.argsort(np.array(ids, dtype=object), kind="stable")] = np.arange(len(nodes))
        return cls(
            node_ids=ids,
            names=names,
            online=_frozen(np.array([n.online for n in nodes], dtype=bool)),
            speed=floats((n.speed_factor for n in nodes), 0.0),
            memory_mb=floats((n.memory_limit_mb for n in nodes), np.inf),
            memory_available_mb=floats((n.memory_available_mb for n in nodes), np.nan),
            battery=floats((n.battery_percent for n in nodes), np.nan),
            power_w=floats((n.power_w for n in nodes), np.nan),
            radio_nj_per_byte=floats((n.radio_nj_per_byte for n in nodes), np.nan),
            uplink_mbps=floats((n.uplink_mbps for n in nodes), np.nan),
            link_rtt_ms=floats((n.link_rtt_ms for n in nodes), np.nan),
            cpu_percent=floats((n.cpu_percent for n in nodes), 0.0),
            emulated=_frozen(np.array([n.emulated for n in nodes], dtype=bool)),
            arch=_frozen(np.array([arch_code[n.arch] for n in nodes], dtype=np.intp)),
            archs=archs,
            id_rank=_frozen(rank),
            by_id=_unique_index(ids),
            by_name=_unique_index(names),
            by_label=_index(n.labels for n in nodes),
            by_accelerator=_index(n.accelerators for n in nodes),
            by_runtime=_index(n.runtimes for n in nodes),
        )


@dataclass(frozen=True)
class ClusterSnapshot:
    """All nodes the cluster knows, online or not, in a stable order."""

    nodes: tuple[NodeView, ...]
    # Lazily computed NodeColumns (see columns()); not part of the snapshot's identity.
    _columns: NodeColumns | None = field(default=None, init=False, repr=False, compare=False, hash=False)

    def columns(self) -> NodeColumns:
        """The nodes as numpy columns, computed on first use and then reused.

        Safe to cache because the snapshot is frozen; a concurrent first call may compute
        the columns twice, both results being equal (no lock needed, no global state).
        """
        if self._columns is None:
            object.__setattr__(self, "_columns", NodeColumns.of(tuple(self.nodes)))
        assert self._columns is not None
        return self._columns

    def online_nodes(self) -> tuple[NodeView, ...]:
        return tuple(node for node in self.nodes if node.online)

    def by_id(self, node_id: str) -> NodeView:
        """The node with ``node_id``; KeyError if absent."""
        for node in self.nodes:
            if node.node_id == node_id:
                return node
        raise KeyError(node_id)
