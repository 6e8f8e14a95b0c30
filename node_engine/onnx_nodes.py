"""The top-level nodes of an ONNX model file, read without the ``onnx`` package.

A node needs only the name, op type and outputs of each node of the main graph (to credit
onnxruntime's profiled kernels to them, :mod:`node_engine.profiling`); the ``onnx`` package (with
protobuf's C++ runtime, ~20 MB) is not part of a device install (``treeline[node]``). An ONNX file
is one protobuf message, so this module walks its wire format directly:

- ``ModelProto.graph`` is field 7, ``GraphProto.node`` field 1 (repeated), and a ``NodeProto`` has
  ``output`` 2 (repeated string), ``name`` 3, ``op_type`` 4 (onnx/onnx.proto3);
- every other field is skipped by its wire type (varint, 64-bit, length-delimited, 32-bit), so
  initializers are never decoded and external data files are never opened.

Raises :class:`ValueError` on a truncated or malformed message (wire types 3/4, groups, are
deprecated and never written by ONNX: refused too).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

_MODEL_GRAPH, _GRAPH_NODE = 7, 1
_NODE_OUTPUT, _NODE_NAME, _NODE_OP_TYPE = 2, 3, 4
_VARINT, _FIXED64, _LENGTH, _FIXED32 = 0, 1, 2, 5


@dataclass(frozen=True)
class GraphNode:
    """One node of the main graph as the file stores it (``name`` may be empty)."""

    name: str
    op_type: str
    outputs: tuple[str, ...]


def graph_nodes(path: str | Path) -> list[GraphNode]:
    """The main graph's nodes of the model at ``path``, in file order."""
    data = memoryview(Path(path).read_bytes())
    nodes: list[GraphNode] = []
    for field, graph in _fields(data):
        if field == _MODEL_GRAPH and isinstance(graph, memoryview):
            nodes += [_node(body) for number, body in _fields(graph)
                      if number == _GRAPH_NODE and isinstance(body, memoryview)]
    return nodes


def _node(body: memoryview) -> GraphNode:
    name, op_type, outputs = "", "", []
    for field, value in _fields(body):
        if not isinstance(value, memoryview):
            continue
        if field == _NODE_OUTPUT:
            outputs.append(_text(value))
        elif field == _NODE_NAME:
            name = _text(value)
        elif field == _NODE_OP_TYPE:
            op_type = _text(value)
    return GraphNode(name, op_type, tuple(outputs))


def _text(value: memoryview) -> str:
    return bytes(value).decode("utf-8", errors="replace")


def _fields(data: memoryview) -> Iterator[tuple[int, memoryview | int]]:
    """``(field number, value)`` of each field of one message: a length-delimited field's bytes,
    else the number itself (varints) or 0 (fixed-size fields, never needed here)."""
    pos, end = 0, len(data)
    while pos < end:
        key, pos = _varint(data, pos)
        field, wire = key >> 3, key & 7
        if wire == _VARINT:
            value, pos = _varint(data, pos)
            yield field, value
        elif wire == _LENGTH:
            size, pos = _varint(data, pos)
            if pos + size > end:
                raise ValueError(f"truncated ONNX message: field {field} needs {size} bytes at byte {pos}")
            yield field, data[pos:pos + size]
            pos += size
        elif wire in (_FIXED64, _FIXED32):
            pos += 8 if wire == _FIXED64 else 4
            if pos > end:
                raise ValueError("truncated ONNX message: fixed-size field past the end")
            yield field, 0
        else:
            raise ValueError(f"not an ONNX model: wire type {wire} at byte {pos}")


def _varint(data: memoryview, pos: int) -> tuple[int, int]:
    result, shift = 0, 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ValueError("truncated or malformed ONNX message: bad varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
