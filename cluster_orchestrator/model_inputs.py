"""What valid values of a model's integer inputs are, read from the graph (pure, onnx only).

An integer input that indexes a table (``Gather(table, input)`` with ``table`` an initializer,
e.g. a transformer's word-embedding matrix) is only valid below the table's row count: a
token id of 40,000 into MiniLM's 30,522-row vocabulary is an error (or silent garbage). The
cluster writes that bound into the placement's input specs as ``index_limit`` so callers
(``treeline infer``) generate ids inside the vocabulary without downloading the model.

Followed from the input through shape-only ops (Cast, Reshape, Unsqueeze, Squeeze, Flatten,
Identity) to the first Gather reading it as ``indices``; inputs with no such Gather have no
limit. The smallest table wins when an input indexes several.
"""

from __future__ import annotations

from collections import defaultdict

import onnx

_PASS_THROUGH = frozenset({"Cast", "Reshape", "Unsqueeze", "Squeeze", "Flatten", "Identity"})
_INTEGER_TYPES = frozenset({onnx.TensorProto.INT64, onnx.TensorProto.INT32, onnx.TensorProto.INT16,
                            onnx.TensorProto.INT8, onnx.TensorProto.UINT8, onnx.TensorProto.UINT16,
                            onnx.TensorProto.UINT32, onnx.TensorProto.UINT64})
_MAX_HOPS = 8


def index_limits(model: onnx.ModelProto) -> dict[str, int]:
    """``{input name: rows of the table it indexes}`` for the integer graph inputs that index one.

    Never raises on an odd graph: what cannot be followed has no limit.
    """
    graph = model.graph
    tables = {t.name: list(t.dims) for t in graph.initializer}
    consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for node in graph.node:
        for name in node.input:
            if name:
                consumers[name].append(node)
    limits: dict[str, int] = {}
    for graph_input in graph.input:
        if graph_input.name in tables or graph_input.type.tensor_type.elem_type not in _INTEGER_TYPES:
            continue
        found = _table_rows(graph_input.name, consumers, tables)
        if found:
            limits[graph_input.name] = min(found)
    return limits


def _table_rows(name: str, consumers: dict[str, list[onnx.NodeProto]],
                tables: dict[str, list[int]]) -> list[int]:
    rows: list[int] = []
    frontier, seen = [name], {name}
    for _ in range(_MAX_HOPS):
        following: list[str] = []
        for tensor in frontier:
            for node in consumers.get(tensor, ()):
                if node.op_type == "Gather" and len(node.input) > 1 and node.input[1] == tensor:
                    dims = tables.get(node.input[0])
                    axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
                    if dims and -len(dims) <= axis < len(dims) and dims[axis] > 0:
                        rows.append(int(dims[axis]))
                elif node.op_type in _PASS_THROUGH and node.input[0] == tensor:
                    following += [o for o in node.output if o and o not in seen]
        seen.update(following)
        frontier = following
        if not frontier:
            break
    return rows
