"""Turn cut positions into standalone ONNX sub-models, one per pipeline stage.

Why explicit: ``onnx.utils.Extractor`` walks backwards from the outputs and silently pulls
upstream nodes into a part when a boundary tensor is missing (pitfalls.md). Here each part is
built from exactly its node range ``ops[start:end]``, so a wrong boundary makes the checker
fail instead of producing a plausible but wrong model.

Contract, for positions ``p_1 < ... < p_{k-1}``:
- part i holds ``ops[p_i:p_{i+1}]`` plus copies of the static nodes (``Constant`` & co.) and
  initializers those ops read; constants are duplicated, never shipped;
- inputs: graph inputs for part 0, else ``graph.cut_set(p_i)``; outputs: graph outputs for the
  last part, else ``graph.cut_set(p_{i+1})`` (a tensor that only passes through a part is both
  an input and an output of it);
- same ``ir_version``, opsets and local functions as the source; ``onnx.checker`` passes;
- serialisation is deterministic, so ``sha256`` identifies a part (artifact store key).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import onnx
from onnx import helper

from ml_scheduler.graph import ModelGraph, effective_inputs

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Partition:
    """One stage's model. ``cut_bytes``: bytes of ``outputs`` sent to the next stage (0 if last).

    ``param_bytes`` counts the weights this part holds; constants shared across parts are
    counted in each part that holds a copy.
    """

    index: int
    model_bytes: bytes
    sha256: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    flops: int
    param_bytes: int
    cut_bytes: int


def _value_info(
    graph: ModelGraph, declared: dict[str, onnx.ValueInfoProto], name: str
) -> onnx.ValueInfoProto:
    """The boundary tensor's declared value_info, else the one from shape inference."""
    if name in declared:
        return declared[name]
    type_proto = graph.tensor_types.get(name)
    if type_proto is None:
        raise ValueError(f"no type known for boundary tensor {name!r}; cannot build a sub-model")
    return helper.make_value_info(name, type_proto)


def _check_same_model(model: onnx.ModelProto, graph: ModelGraph) -> None:
    nodes = model.graph.node
    expected = len(graph.node_indices) + len(graph.static_node_indices)
    if len(nodes) != expected or any(
        nodes[idx].op_type != op.op_type for idx, op in zip(graph.node_indices, graph.ops, strict=True)
    ):
        raise ValueError("graph was not analysed from this model")


def _static_closure(model: onnx.ModelProto, graph: ModelGraph, needed: set[str]) -> list[int]:
    """Indices (topological order) of the static nodes producing ``needed``, transitively."""
    rank = {idx: r for r, idx in enumerate(graph.static_node_indices)}
    producers = {out: idx for idx in graph.static_node_indices for out in model.graph.node[idx].output}
    chosen: set[int] = set()
    stack = [name for name in needed if name in producers]
    while stack:
        idx = producers[stack.pop()]
        if idx in chosen:
            continue
        chosen.add(idx)
        stack.extend(n for n in effective_inputs(model.graph.node[idx]) if n in producers)
    return sorted(chosen, key=rank.__getitem__)


def _build_part(model: onnx.ModelProto, graph: ModelGraph, index: int, start: int, end: int,
                inputs: tuple[str, ...], outputs: tuple[str, ...]) -> onnx.ModelProto:
    source = model.graph
    op_nodes = [source.node[idx] for idx in graph.node_indices[start:end]]
    needed = {name for node in op_nodes for name in effective_inputs(node)}
    needed.update(name for name in outputs if name in graph.static_tensors)
    static_idx = _static_closure(model, graph, needed)
    static_nodes = [source.node[idx] for idx in static_idx]
    used = needed | {name for node in static_nodes for name in effective_inputs(node)}
    initializers = [init for init in source.initializer if init.name in used]
    for init in initializers:
        if init.data_location == onnx.TensorProto.EXTERNAL:
            raise ValueError(f"initializer {init.name!r} uses external data; load it into the model first")
    declared_in = {vi.name: vi for vi in source.input}
    declared_out = {vi.name: vi for vi in source.output}
    part_graph = helper.make_graph(
        [*static_nodes, *op_nodes],
        f"{source.name or 'model'}_part{index}",
        [_value_info(graph, declared_in, name) for name in inputs],
        [_value_info(graph, {**declared_in, **declared_out}, name) for name in outputs],
        initializer=initializers,
    )
    part = helper.make_model(part_graph, opset_imports=list(model.opset_import),
                             producer_name="treeline.ml_scheduler")
    part.ir_version = model.ir_version
    part.functions.extend(model.functions)
    onnx.checker.check_model(part)
    return part


def extract_partitions(
    model: onnx.ModelProto, graph: ModelGraph, positions: Sequence[int]
) -> list[Partition]:
    """Build one :class:`Partition` per range defined by ``positions`` (see module docstring).

    ``graph`` must come from ``analyze_model(model)``. Raises ValueError for positions that
    are not strictly increasing within 1..n-1, for external-data weights, or a model mismatch;
    ``onnx.checker.ValidationError`` if a part is invalid (a bug, never silently ignored).
    """
    _check_same_model(model, graph)
    ranges = graph.ranges(positions)
    last = len(ranges) - 1
    parts: list[Partition] = []
    for index, (start, end) in enumerate(ranges):
        inputs = graph.input_names if index == 0 else graph.cut_set(start)
        outputs = graph.output_names if index == last else graph.cut_set(end)
        proto = _build_part(model, graph, index, start, end, inputs, outputs)
        data = proto.SerializeToString(deterministic=True)
        parts.append(
            Partition(
                index=index,
                model_bytes=data,
                sha256=hashlib.sha256(data).hexdigest(),
                inputs=tuple(inputs),
                outputs=tuple(outputs),
                flops=graph.range_flops(start, end),
                param_bytes=graph.range_param_bytes(start, end),
                cut_bytes=0 if index == last else graph.cut_bytes(end),
            )
        )
        logger.debug("partition %d: ops[%d:%d] in=%s out=%s %d bytes", index, start, end, inputs, outputs,
                     len(data))
    return parts
