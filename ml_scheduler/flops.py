"""FLOP estimates per ONNX op from inferred shapes.

Why approximate: planners only need relative compute per op to balance partitions; the counts
follow the usual conventions (a multiply-add is 2 FLOPs; Conv/Gemm/MatMul dominate; pure data
movement is free; other ops cost about one FLOP per output element). Unknown shapes give 0
rather than a guess, so a missing shape never inflates one side of a cut.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import onnx

# Pure data movement / metadata ops: no arithmetic.
_ZERO_FLOP_OPS = frozenset(
    {
        "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Concat", "Split", "Slice", "Gather",
        "GatherElements", "GatherND", "Identity", "Shape", "Size", "Cast", "CastLike", "Expand", "Pad",
        "Constant", "ConstantOfShape", "Dropout", "Tile", "DepthToSpace", "SpaceToDepth", "Range",
    }
)
_POOL_OPS = frozenset({"MaxPool", "AveragePool", "LpPool"})
_GLOBAL_REDUCE_PREFIXES = ("Global", "Reduce")


def _numel(shape: tuple[int, ...] | None) -> int:
    return math.prod(shape) if shape is not None else 0


def op_flops(node: onnx.NodeProto, shape: Mapping[str, tuple[int, ...] | None]) -> int:
    """Approximate FLOPs (multiply-add = 2) from inferred shapes; unknown shapes give 0."""
    op = node.op_type
    out = _numel(shape.get(node.output[0])) if node.output else 0
    ins = [shape.get(n) if n else None for n in node.input]
    if op in _ZERO_FLOP_OPS:
        return 0
    if op == "Conv" and len(ins) >= 2 and ins[1] is not None:
        weight = ins[1]
        return 2 * out * math.prod(weight[1:]) + (out if len(ins) > 2 and node.input[2] else 0)
    if op == "ConvTranspose" and len(ins) >= 2 and ins[1] is not None:
        return 2 * _numel(ins[0]) * math.prod(ins[1][1:])
    if op == "Gemm" and ins and ins[0] is not None and len(ins[0]) == 2:
        trans_a = next((a.i for a in node.attribute if a.name == "transA"), 0)
        k = ins[0][0] if trans_a else ins[0][1]
        return 2 * out * k + (out if len(ins) > 2 and node.input[2] else 0)
    if op == "MatMul" and ins and ins[0] is not None and len(ins[0]) >= 1:
        return 2 * out * ins[0][-1]
    if op in _POOL_OPS:
        kernel = next((list(a.ints) for a in node.attribute if a.name == "kernel_shape"), [1])
        return out * math.prod(kernel)
    if op.startswith(_GLOBAL_REDUCE_PREFIXES):
        return _numel(ins[0]) if ins else 0
    if op in {"BatchNormalization", "InstanceNormalization", "LayerNormalization"}:
        return 2 * out
    if op in {"Softmax", "LogSoftmax"}:
        return 3 * out
    return sum(_numel(shape.get(o)) for o in node.output if o)
