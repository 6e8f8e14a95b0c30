"""Bind a model's symbolic input dimensions to the shapes the SLA declares (pure, onnx only).

Why: a model exported with ``dynamic_axes`` (or the dynamo exporter's dynamic shapes) has inputs
like ``[N, 3, H, W]``. Analysis (:func:`ml_scheduler.graph.analyze_model`) and profiling cannot
size what they cannot see: with every symbolic dimension read as 1, a 224x224 image looked
50,176x smaller than it is, and a plan predicted 0.03 ms for a model that takes 6.7 ms. So
before analysis, profiling and extraction the cluster binds every symbolic (or unknown)
dimension of every graph input to the SLA's value and lets shape inference carry the
concrete sizes through the graph.

Contract:

- :func:`bind_input_shapes` returns a copy (the argument is never modified) whose graph inputs
  have the declared shapes; intermediate ``value_info`` entries with symbolic dimensions are
  dropped (inference recomputes them) and graph outputs get inferred concrete shapes where
  inference finds them. A declared shape that disagrees with a fixed dimension of the model,
  or has another rank, is :class:`BindingError` naming ``inputs[i].shape`` and both shapes.
- :func:`needs_binding` says whether any graph input has a symbolic/unknown dimension.
- :func:`complete_outputs` fills in graph outputs that declare no type or shape from shape
  inference (onnxruntime runs such models, but an extracted partition whose output has no
  shape is refused by ``onnx.checker``); :class:`BindingError` names an output whose element
  type cannot be inferred.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import onnx

log = logging.getLogger(__name__)


class BindingError(ValueError):
    """A declared shape does not fit the model; ``path`` names the field (``inputs[0].shape``)."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
        self.message = message


def _dims(value_type: onnx.TypeProto) -> list[onnx.TensorShapeProto.Dimension] | None:
    if not value_type.HasField("tensor_type") or not value_type.tensor_type.HasField("shape"):
        return None
    return list(value_type.tensor_type.shape.dim)


def _symbolic(dims: Sequence[onnx.TensorShapeProto.Dimension] | None) -> bool:
    return dims is None or any(not d.HasField("dim_value") for d in dims)


def needs_binding(model: onnx.ModelProto) -> bool:
    """Whether a (non-initializer) graph input has a symbolic or unknown dimension or no shape."""
    initializers = {t.name for t in model.graph.initializer}
    return any(_symbolic(_dims(i.type)) for i in model.graph.input if i.name not in initializers)


def _set_shape(value_type: onnx.TypeProto, shape: Sequence[int]) -> None:
    tensor = value_type.tensor_type
    tensor.ClearField("shape")
    for size in shape:
        tensor.shape.dim.add().dim_value = int(size)


def bind_input_shapes(model: onnx.ModelProto, shapes: Mapping[str, Sequence[int]]) -> onnx.ModelProto:
    """A copy of ``model`` with graph inputs bound to ``shapes`` (``{input name: [dims]}``).

    Inputs not in ``shapes`` keep their declared shape. Raises :class:`BindingError` for a rank
    or fixed-dimension mismatch (``inputs[i].shape``) or a non-positive dimension.
    """
    bound = onnx.ModelProto()
    bound.CopyFrom(model)
    graph = bound.graph
    initializers = {t.name for t in graph.initializer}
    position = 0
    for value in graph.input:
        if value.name in initializers:
            continue
        index, position = position, position + 1
        shape = shapes.get(value.name)
        if shape is None:
            continue
        path = f"inputs[{index}].shape"
        if any(int(s) <= 0 for s in shape):
            raise BindingError(path, f"every dimension must be positive, got {list(shape)}")
        dims = _dims(value.type)
        if dims is not None:
            if len(dims) != len(shape):
                raise BindingError(path, f"{value.name!r} has rank {len(dims)} in the model, "
                                         f"the SLA declares {list(shape)}")
            for axis, (dim, size) in enumerate(zip(dims, shape, strict=True)):
                if dim.HasField("dim_value") and dim.dim_value != int(size):
                    raise BindingError(path, f"{value.name!r} axis {axis} is fixed to {dim.dim_value} in "
                                             f"the model, the SLA declares {int(size)}")
        _set_shape(value.type, shape)
    kept = [v for v in graph.value_info if not _symbolic(_dims(v.type))]
    del graph.value_info[:]
    graph.value_info.extend(kept)
    for output in graph.output:
        if _symbolic(_dims(output.type)):
            output.type.tensor_type.ClearField("shape")
    return complete_outputs(bound)


def outputs_incomplete(model: onnx.ModelProto) -> list[int]:
    """Indices of graph outputs that declare no element type, no shape or a symbolic dimension."""
    return [i for i, o in enumerate(model.graph.output)
            if not o.type.tensor_type.elem_type or _symbolic(_dims(o.type))]


def complete_outputs(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with every graph output's type and shape filled in from shape inference.

    Modified in place and returned. An output whose element type stays unknown raises
    :class:`BindingError` (``outputs[i].dtype``); one whose shape inference cannot find keeps
    what it declared.
    """
    incomplete = outputs_incomplete(model)
    if not incomplete:
        return model
    try:
        inferred = onnx.shape_inference.infer_shapes(model, check_type=False, strict_mode=False,
                                                     data_prop=True)
    except Exception as exc:  # noqa: BLE001 - onnx raises several kinds; fall back to what is declared
        log.warning("shape inference failed while completing outputs: %s", exc)
        inferred = model
    known = {v.name: v.type for v in (*inferred.graph.value_info, *inferred.graph.output)}
    for index in incomplete:
        output = model.graph.output[index]
        found = known.get(output.name)
        # take the inferred type when it knows more: a type where none was declared, a concrete
        # shape where the declared one is symbolic, or any shape where none was declared
        if found is not None and found.tensor_type.elem_type and (
                not output.type.tensor_type.elem_type or not _symbolic(_dims(found))
                or _dims(output.type) is None):
            output.type.CopyFrom(found)
        if not output.type.tensor_type.elem_type:
            raise BindingError(f"outputs[{index}].dtype", f"the element type of output {output.name!r} "
                                                          "is neither declared nor inferable")
    return model
