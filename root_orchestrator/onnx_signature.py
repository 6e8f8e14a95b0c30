"""Validate uploaded ONNX bytes and extract the model's signature (the registry's checklist item 3).

Only ``onnx`` is imported (no onnxruntime): the root never runs models. Parsing arbitrary bytes
as protobuf can "succeed" on garbage, so a model must also carry an IR version, an opset and at
least one graph output. A raw model whose weights live in external data files is refused here: the
artifact alone would be incomplete; such a model is uploaded as an archive
(:mod:`root_orchestrator.model_intake`).
"""

from __future__ import annotations

import logging
from typing import Any

import onnx
from onnx import helper

from treeline_common.errors import InvalidInput

log = logging.getLogger(__name__)


def _bad(message: str) -> InvalidInput:
    return InvalidInput("body is not a valid ONNX model", [{"path": "body", "message": message}])


def load_onnx(data: bytes) -> onnx.ModelProto:
    """Parse ``data`` as a self-contained ONNX model, or raise InvalidInput naming ``body``."""
    if not data:
        raise _bad("empty body")
    try:
        model = onnx.load_model_from_string(data)
    except Exception as exc:  # noqa: BLE001 - protobuf raises DecodeError and, on some inputs, others
        raise _bad(f"cannot parse as ONNX: {type(exc).__name__}: {exc}") from None
    if model.ir_version <= 0 or not model.opset_import or not model.graph.output:
        raise _bad("missing ir_version, opset_import or graph outputs")
    for tensor in model.graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            raise _bad(f"initializer {tensor.name!r} uses external data; upload the .onnx and its data "
                       "files as one archive (tar or zip), or save the model as one file")
    return model


def _dtype_name(elem_type: int) -> str | None:
    try:
        return str(helper.tensor_dtype_to_np_dtype(elem_type).name)
    except (KeyError, TypeError, ValueError):  # UNDEFINED, an unknown code, or no numpy dtype for it
        return None


def value_info(info: onnx.ValueInfoProto) -> dict[str, Any]:
    """``{name, dtype, shape}``; symbolic dims are their names, unknown dims are None."""
    tensor = info.type.tensor_type if info.type.HasField("tensor_type") else None
    if tensor is None:
        return {"name": info.name, "dtype": None, "shape": None}
    shape: list[int | str | None] | None = None
    if tensor.HasField("shape"):
        shape = []
        for dim in tensor.shape.dim:
            if dim.HasField("dim_value"):
                shape.append(int(dim.dim_value))
            elif dim.HasField("dim_param"):
                shape.append(str(dim.dim_param))
            else:
                shape.append(None)
    return {"name": info.name, "dtype": _dtype_name(tensor.elem_type), "shape": shape}


def extract_signature(model: onnx.ModelProto) -> dict[str, Any]:
    """Graph inputs (minus initializers, which old exporters list as inputs) and outputs."""
    initializers = {t.name for t in model.graph.initializer}
    return {
        "inputs": [value_info(i) for i in model.graph.input if i.name not in initializers],
        "outputs": [value_info(o) for o in model.graph.output],
        "opset": max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=None),
    }
