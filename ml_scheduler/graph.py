"""Static analysis of an ONNX model as a chain of ops: FLOPs, weights and cut sets.

Why: every partitioner and scheduler in Treeline reasons about the same three numbers per
position in a topological order of the graph: compute before/after, weights on each side and
the bytes that must cross the cut. This module computes them once (O(nodes + edges) after
shape inference) so that planners can query any cut in O(1) (bytes) or O(live tensors) (names).

Contract (see docs/contracts.md, "ml_scheduler API"):
- ``ops`` are the *non-static* nodes in a topological order (the graph's own order when it is
  already topological, else Kahn's algorithm with ties broken by original index).
- *Static* nodes (``Constant`` and any deterministic node whose inputs are all static, e.g.
  ``Identity`` of a weight) are not ops: their outputs are constants, like initializers. They
  never appear in a cut set; extraction duplicates them into every partition that needs them.
- ``cut_set(p)``: non-static tensors produced by ``ops[:p]`` (or graph inputs) and consumed by
  ``ops[p:]``, plus graph outputs produced before ``p``. Every ``p`` in 1..n-1 is a valid cut:
  ``ops[:p]`` is a prefix of a topological order, hence closed under predecessors.
- FLOPs count a multiply-add as 2 FLOPs. Byte sizes come from shape inference; a symbolic
  dimension is taken as 1 here, so callers bind symbolic inputs to the SLA's shapes first
  (:func:`ml_scheduler.binding.bind_input_shapes`). A position whose cut set holds anything but
  a tensor of known size is :attr:`ModelGraph.uncuttable` and never offered to a planner.

Pure: no I/O, no clock, no global state; onnx only (never onnxruntime).
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

import onnx
from onnx import helper

from ml_scheduler.flops import op_flops

logger = logging.getLogger(__name__)

# Nodes whose outputs differ between runs even for constant inputs: never treated as static.
_NONDETERMINISTIC_OPS = frozenset(
    {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli"}
)
_FALLBACK_DTYPE_SIZES: dict[int, int] = {
    onnx.TensorProto.BFLOAT16: 2, onnx.TensorProto.FLOAT16: 2, onnx.TensorProto.BOOL: 1}


@dataclass(frozen=True)
class OpInfo:
    """One non-static node: unique ``name``, its tensors and its costs.

    ``param_bytes`` counts the static tensors (initializers, constant-node outputs) the op reads,
    each attributed to its *first* consumer only, so ``sum(op.param_bytes) == graph.param_bytes``.
    ``output_bytes`` is the size of everything the op produces.
    """

    name: str
    op_type: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    flops: int
    param_bytes: int
    output_bytes: int


@dataclass(frozen=True, eq=False)
class ModelGraph:
    """The analysed model. Build it with :func:`analyze_model`; never mutate it."""

    ops: tuple[OpInfo, ...]
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    total_flops: int
    param_bytes: int
    # Index into ``model.graph.node`` of each op / of each static node, in topological order.
    node_indices: tuple[int, ...] = field(repr=False)
    static_node_indices: tuple[int, ...] = field(repr=False)
    static_tensors: frozenset[str] = field(repr=False)
    tensor_bytes: Mapping[str, int] = field(repr=False)
    tensor_types: Mapping[str, onnx.TypeProto] = field(repr=False)
    # Per op: the static tensors it reads (for per-range weight sums).
    op_static_inputs: tuple[tuple[str, ...], ...] = field(repr=False)
    _intervals: tuple[tuple[int, int, str], ...] = field(repr=False)  # (producer, last use, name)
    _interval_starts: tuple[int, ...] = field(repr=False)
    _cut_bytes: tuple[int, ...] = field(repr=False)  # index p in 0..n
    _flops_prefix: tuple[int, ...] = field(repr=False)  # index p in 0..n
    # Interior positions whose cut set holds a non-tensor (sequence, map, optional) or a tensor
    # of unknown size: never offered to a planner (an extracted partition could not be sized
    # or framed).
    uncuttable: frozenset[int] = field(default=frozenset(), repr=False)

    def cut_positions(self) -> list[int]:
        """The valid cut positions in 1..len(ops)-1: every prefix of a topological order is one,
        except the :attr:`uncuttable` positions."""
        return [p for p in range(1, len(self.ops)) if p not in self.uncuttable]

    def _check_position(self, p: int) -> None:
        if not 0 <= p <= len(self.ops):
            raise ValueError(f"cut position {p} outside 0..{len(self.ops)}")

    def cut_set(self, p: int) -> tuple[str, ...]:
        """Tensors crossing the cut before ``ops[p]``, ordered by producer then output order.

        ``p`` may also be 0 (the graph inputs that are used) or n (the graph outputs).
        """
        self._check_position(p)
        upto = bisect.bisect_left(self._interval_starts, p)  # intervals with producer < p
        return tuple(name for start, end, name in self._intervals[:upto] if end >= p)

    def cut_bytes(self, p: int) -> int:
        """Bytes crossing the cut at ``p`` (sum of the cut set's tensor sizes), O(1)."""
        self._check_position(p)
        return self._cut_bytes[p]

    def range_flops(self, start: int, end: int) -> int:
        """FLOPs of ``ops[start:end]``, O(1)."""
        self._check_position(start)
        self._check_position(end)
        return self._flops_prefix[end] - self._flops_prefix[start]

    def range_static_tensors(self, start: int, end: int) -> tuple[str, ...]:
        """Static tensors read by ``ops[start:end]``, each once, in first-use order."""
        seen: dict[str, None] = {}
        for names in self.op_static_inputs[start:end]:
            for name in names:
                seen.setdefault(name, None)
        return tuple(seen)

    def range_param_bytes(self, start: int, end: int) -> int:
        """Weight bytes a partition ``ops[start:end]`` must hold (shared constants counted once)."""
        return sum(self.tensor_bytes.get(name, 0) for name in self.range_static_tensors(start, end))

    def ranges(self, positions: Sequence[int]) -> list[tuple[int, int]]:
        """``[(start, end), ...]`` for the partitions defined by increasing cut ``positions``."""
        bounds = [0, *positions, len(self.ops)]
        for a, b in itertools.pairwise(bounds):
            if not a < b:
                raise ValueError(
                    f"cut positions must be strictly increasing within 1..n-1: {list(positions)}"
                )
        return list(itertools.pairwise(bounds))


def _dtype_size(elem_type: int) -> int:
    if elem_type in _FALLBACK_DTYPE_SIZES:
        return _FALLBACK_DTYPE_SIZES[elem_type]
    try:
        return int(helper.tensor_dtype_to_np_dtype(elem_type).itemsize)
    except (KeyError, TypeError, ValueError):
        return 0


def _shape_of(type_proto: onnx.TypeProto | None) -> tuple[int, ...] | None:
    """Static shape of a tensor type; symbolic/unknown dims become 1; None when rank unknown."""
    if type_proto is None or not type_proto.HasField("tensor_type"):
        return None
    tensor_type = type_proto.tensor_type
    if not tensor_type.HasField("shape"):
        return None
    return tuple(d.dim_value if d.HasField("dim_value") else 1 for d in tensor_type.shape.dim)


def _type_bytes(type_proto: onnx.TypeProto | None) -> int | None:
    shape = _shape_of(type_proto)
    if shape is None or type_proto is None:
        return None
    return math.prod(shape) * _dtype_size(type_proto.tensor_type.elem_type)


def _subgraph_outer_refs(graph: onnx.GraphProto) -> list[str]:
    """Names a subgraph (If/Loop/Scan body) reads from enclosing scopes."""
    defined = {i.name for i in graph.input} | {t.name for t in graph.initializer}
    refs: list[str] = []
    for node in graph.node:
        for name in effective_inputs(node):
            if name and name not in defined:
                refs.append(name)
        defined.update(node.output)
    refs.extend(o.name for o in graph.output if o.name not in defined)
    return refs


def effective_inputs(node: onnx.NodeProto) -> tuple[str, ...]:
    """Explicit non-empty inputs plus outer-scope names used by the node's subgraphs, deduplicated."""
    names = dict.fromkeys(n for n in node.input if n)
    for attr in node.attribute:
        subgraphs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
        for sub in subgraphs:
            for name in _subgraph_outer_refs(sub):
                names.setdefault(name, None)
    return tuple(names)


def _topological_order(nodes: Sequence[onnx.NodeProto], inputs: Sequence[tuple[str, ...]],
                       available: set[str]) -> list[int]:
    """The node order itself when topological, else Kahn's algorithm (smallest index first)."""
    producer: dict[str, int] = {}
    for idx, node in enumerate(nodes):
        for out in node.output:
            if out:
                producer[out] = idx
    in_order = True
    seen = set(available)
    for idx, node in enumerate(nodes):
        if any(name not in seen for name in inputs[idx]):
            in_order = False
            break
        seen.update(node.output)
    if in_order:
        return list(range(len(nodes)))
    indegree = [0] * len(nodes)
    successors: list[list[int]] = [[] for _ in nodes]
    for idx in range(len(nodes)):
        for name in inputs[idx]:
            if name in available:
                continue
            if name not in producer:
                raise ValueError(f"node {nodes[idx].name or idx!r} reads undefined tensor {name!r}")
            successors[producer[name]].append(idx)
            indegree[idx] += 1
    ready = [i for i, d in enumerate(indegree) if d == 0]
    heapq.heapify(ready)
    order: list[int] = []
    while ready:
        idx = heapq.heappop(ready)
        order.append(idx)
        for succ in successors[idx]:
            indegree[succ] -= 1
            if indegree[succ] == 0:
                heapq.heappush(ready, succ)
    if len(order) != len(nodes):
        raise ValueError("graph has a cycle; it is not a valid ONNX model")
    return order


def _infer_types(model: onnx.ModelProto) -> dict[str, onnx.TypeProto]:
    """Name -> TypeProto for every tensor shape inference knows about (model left untouched)."""
    try:
        inferred = onnx.shape_inference.infer_shapes(
            model, check_type=False, strict_mode=False, data_prop=True
        )
    except Exception as exc:  # noqa: BLE001 - fall back to declared types; sizes become partial
        logger.warning("shape inference failed (%s); using declared value_info only", exc)
        inferred = model
    types: dict[str, onnx.TypeProto] = {}
    graph = inferred.graph
    for value_info in (*graph.value_info, *graph.input, *graph.output):
        if value_info.type.HasField("tensor_type"):
            types[value_info.name] = value_info.type
    for init in model.graph.initializer:
        types[init.name] = helper.make_tensor_type_proto(init.data_type, list(init.dims))
    return types


def analyze_model(model: onnx.ModelProto) -> ModelGraph:
    """Analyse ``model`` (not modified) into a :class:`ModelGraph`.

    Raises ValueError if the graph is cyclic or reads a tensor nothing defines.
    """
    graph = model.graph
    initializer_names = {init.name for init in graph.initializer}
    input_names = tuple(i.name for i in graph.input if i.name not in initializer_names)
    output_names = tuple(o.name for o in graph.output)
    nodes = list(graph.node)
    node_inputs = [effective_inputs(n) for n in nodes]
    order = _topological_order(nodes, node_inputs, set(input_names) | initializer_names)

    if order == list(range(len(nodes))):
        types = _infer_types(model)
    else:  # shape inference walks nodes in file order, so give it a sorted copy
        ordered = onnx.ModelProto()
        ordered.CopyFrom(model)
        del ordered.graph.node[:]
        ordered.graph.node.extend(nodes[idx] for idx in order)
        types = _infer_types(ordered)
    tensor_bytes: dict[str, int] = {}
    unknown: list[str] = []

    def size(name: str) -> int:
        if name not in tensor_bytes:
            nbytes = _type_bytes(types.get(name))
            if nbytes is None:
                unknown.append(name)
            tensor_bytes[name] = nbytes or 0
        return tensor_bytes[name]

    static = set(initializer_names)
    static_nodes: list[int] = []
    op_nodes: list[int] = []
    for idx in order:
        node = nodes[idx]
        if node.op_type not in _NONDETERMINISTIC_OPS and all(n in static for n in node_inputs[idx]):
            static_nodes.append(idx)
            static.update(o for o in node.output if o)
        else:
            op_nodes.append(idx)

    shapes = {name: _shape_of(t) for name, t in types.items()}
    n = len(op_nodes)
    producer: dict[str, int] = dict.fromkeys(input_names, -1)
    last_use: dict[str, int] = {}
    ops: list[OpInfo] = []
    op_static_inputs: list[tuple[str, ...]] = []
    seen_static: set[str] = set()
    used_names: set[str] = set()
    for pos, idx in enumerate(op_nodes):
        node = nodes[idx]
        name = node.name or f"{node.op_type}_{idx}"
        if name in used_names:
            name = f"{name}_{idx}"
        used_names.add(name)
        statics = tuple(dict.fromkeys(t for t in node_inputs[idx] if t in static))
        first_use = [t for t in statics if t not in seen_static]
        seen_static.update(first_use)
        for tensor in node_inputs[idx]:
            if tensor not in static:
                last_use[tensor] = pos
        outputs = tuple(o for o in node.output if o)
        for out in outputs:
            producer[out] = pos
        op_static_inputs.append(statics)
        ops.append(
            OpInfo(
                name=name,
                op_type=node.op_type,
                inputs=tuple(node.input),
                outputs=tuple(node.output),
                flops=op_flops(node, shapes),
                param_bytes=sum(size(t) for t in first_use),
                output_bytes=sum(size(o) for o in outputs),
            )
        )
    for out in output_names:
        if out not in static:
            last_use[out] = n

    intervals = sorted(
        (
            (producer[name], last_use[name], name)
            for name in producer
            if last_use.get(name, -2) > producer[name]
        ),
        key=lambda item: (item[0], _output_rank(item[2], item[0], ops, input_names)),
    )
    diff = [0] * (n + 2)
    for start, end, name in intervals:
        diff[start + 1] += size(name)
        diff[end + 1] -= size(name)
    cut_bytes: list[int] = []
    running = 0
    for p in range(n + 1):
        running += diff[p]
        cut_bytes.append(running)
    unsized = {name for _, _, name in intervals if _type_bytes(types.get(name)) is None}
    blocked = [0] * (n + 2)  # unsized tensors live across each position
    for start, end, name in intervals:
        if name in unsized:
            blocked[start + 1] += 1
            blocked[end + 1] -= 1
    live_unsized = list(itertools.accumulate(blocked))
    uncuttable = frozenset(p for p in range(1, n) if live_unsized[p] > 0)
    flops_prefix = [0]
    for op in ops:
        flops_prefix.append(flops_prefix[-1] + op.flops)
    for name in (*static, *input_names):
        size(name)
    if unknown:
        logger.warning("no static shape for %d tensor(s), counted as 0 bytes: %s", len(unknown), unknown[:5])

    return ModelGraph(
        ops=tuple(ops),
        input_names=input_names,
        output_names=output_names,
        total_flops=flops_prefix[-1],
        param_bytes=sum(op.param_bytes for op in ops),
        node_indices=tuple(op_nodes),
        static_node_indices=tuple(static_nodes),
        static_tensors=frozenset(static),
        tensor_bytes=MappingProxyType(tensor_bytes),
        tensor_types=MappingProxyType(types),
        op_static_inputs=tuple(op_static_inputs),
        _intervals=tuple(intervals),
        _interval_starts=tuple(start for start, _, _ in intervals),
        _cut_bytes=tuple(cut_bytes),
        _flops_prefix=tuple(flops_prefix),
        uncuttable=uncuttable,
    )


def _output_rank(name: str, start: int, ops: Sequence[OpInfo], input_names: Iterable[str]) -> int:
    """Position of ``name`` among its producer's outputs (or among graph inputs), for stable order."""
    names = tuple(input_names) if start < 0 else ops[start].outputs
    return names.index(name)
