"""The Open Inference Protocol (KServe v2 REST) tensors: decode requests, encode responses (pure).

The protocol (https://kserve.github.io/website/docs/concepts/architecture/data-plane/v2-protocol,
also Triton's HTTP API) sends ``POST /v2/models/<name>/infer`` with a JSON body::

    {"id": "...", "inputs": [{"name", "shape": [..], "datatype": "FP32", "data": [...]}],
     "outputs": [{"name", "parameters": {"binary_data": true}}], "parameters": {...}}

``data`` is the tensor's elements in row-major order, flat or nested. The *binary tensor data
extension* puts the JSON first and the raw little-endian bytes of tensors after it: the header
``Inference-Header-Content-Length`` gives the JSON's length, and each binary input carries
``"parameters": {"binary_data_size": N}`` instead of ``data`` (in input order). A response carries
binary outputs the same way when the request asked (``binary_data`` per output, or
``"parameters": {"binary_data_output": true}``).

Every problem is :class:`~treeline_common.errors.InvalidInput` naming the field
(``inputs[1].shape``) and the reason; ``BYTES`` tensors are not supported (Treeline serves ONNX
numeric tensors).
"""

from __future__ import annotations

import hmac
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from treeline_common.errors import InvalidInput

HEADER_LENGTH = "Inference-Header-Content-Length"

DATATYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_), "UINT8": np.dtype(np.uint8), "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32), "UINT64": np.dtype(np.uint64), "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16), "INT32": np.dtype(np.int32), "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16), "FP32": np.dtype(np.float32), "FP64": np.dtype(np.float64),
}
_BY_DTYPE = {dtype: name for name, dtype in DATATYPES.items()}
# ONNX type names as the registry's signature stores them (root_orchestrator/onnx_signature.py)
_ONNX = {"bool": "BOOL", "uint8": "UINT8", "uint16": "UINT16", "uint32": "UINT32", "uint64": "UINT64",
         "int8": "INT8", "int16": "INT16", "int32": "INT32", "int64": "INT64", "float16": "FP16",
         "float32": "FP32", "float": "FP32", "float64": "FP64", "double": "FP64"}
MAX_ELEMENTS = 1 << 28  # a tensor of more elements is refused before any allocation


def datatype_of(dtype: Any) -> str:
    """The v2 datatype name of a numpy dtype or an ONNX/numpy type name (``"float32"`` -> ``FP32``)."""
    if isinstance(dtype, str):
        if dtype.upper() in DATATYPES:
            return dtype.upper()
        if dtype.lower() in _ONNX:
            return _ONNX[dtype.lower()]
    try:
        return _BY_DTYPE[np.dtype(dtype)]
    except (TypeError, KeyError):
        raise InvalidInput(f"type {dtype!r} has no v2 datatype",
                           [{"path": "datatype", "message": f"unsupported type {dtype!r}"}]) from None


@dataclass(frozen=True)
class InferRequest:
    """A decoded request: ``inputs`` by name (in request order), the outputs asked for (None:
    all), and which of them go back as binary data."""

    id: str
    inputs: dict[str, np.ndarray]
    outputs: tuple[str, ...] | None = None
    binary_outputs: frozenset[str] = field(default_factory=frozenset)
    binary_default: bool = False

    def binary(self, name: str) -> bool:
        return self.binary_default or name in self.binary_outputs


def _problem(path: str, message: str) -> InvalidInput:
    return InvalidInput(f"invalid inference request: {path}: {message}", [{"path": path, "message": message}])


def _shape(raw: Any, path: str) -> tuple[int, ...]:
    if not isinstance(raw, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                            for d in raw):
        raise _problem(f"{path}.shape", "must be a list of non-negative integers")
    if math.prod(raw) > MAX_ELEMENTS:
        raise _problem(f"{path}.shape", f"more than {MAX_ELEMENTS} elements")
    return tuple(raw)


def _json_tensor(data: Any, dtype: np.dtype[Any], shape: tuple[int, ...], path: str) -> np.ndarray:
    try:
        array = np.asarray(data, dtype=dtype)
    except (TypeError, ValueError, OverflowError) as exc:
        raise _problem(f"{path}.data", f"not {_BY_DTYPE[dtype]} values ({exc})") from None
    if array.size != math.prod(shape):
        raise _problem(f"{path}.data",
                       f"has {array.size} elements, shape {list(shape)} needs {math.prod(shape)}")
    return array.reshape(shape)


def _parameters(doc: Mapping[str, Any], path: str) -> Mapping[str, Any]:
    params = doc.get("parameters", {})
    if not isinstance(params, Mapping):
        raise _problem(f"{path}.parameters", "must be an object")
    return params


def decode_request(body: bytes, header_length: str | None = None) -> InferRequest:
    """Decode an infer request body (JSON, or JSON + binary tensors when ``header_length``, the
    ``Inference-Header-Content-Length`` header, is given)."""
    if header_length is not None:
        try:
            split = int(header_length)
        except ValueError:
            raise _problem(HEADER_LENGTH, "must be an integer") from None
        if not 0 < split <= len(body):
            raise _problem(HEADER_LENGTH, f"must be between 1 and the body's {len(body)} bytes")
        head, blob = body[:split], memoryview(body)[split:]
    else:
        head, blob = body, memoryview(b"")
    try:
        doc = json.loads(head)
    except (ValueError, RecursionError) as exc:
        raise _problem("body", f"not JSON ({exc.__class__.__name__})") from None
    if not isinstance(doc, Mapping):
        raise _problem("body", "must be a JSON object")
    raw_inputs = doc.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise _problem("inputs", "must be a non-empty list")
    inputs: dict[str, np.ndarray] = {}
    offset = 0
    for index, item in enumerate(raw_inputs):
        path = f"inputs[{index}]"
        if not isinstance(item, Mapping):
            raise _problem(path, "must be an object")
        name = item.get("name")
        if not isinstance(name, str) or not name:
            raise _problem(f"{path}.name", "must be a non-empty string")
        if name in inputs:
            raise _problem(f"{path}.name", f"{name!r} is given twice")
        datatype = item.get("datatype")
        if datatype not in DATATYPES:
            raise _problem(f"{path}.datatype", f"must be one of {sorted(DATATYPES)} (BYTES is not supported)")
        dtype, shape = DATATYPES[str(datatype)], _shape(item.get("shape"), path)
        size = _parameters(item, path).get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise _problem(f"{path}.parameters.binary_data_size", "must be a non-negative integer")
            if size != math.prod(shape) * dtype.itemsize:
                raise _problem(f"{path}.parameters.binary_data_size",
                               f"is {size} bytes, shape {list(shape)} of {datatype} needs "
                               f"{math.prod(shape) * dtype.itemsize}")
            if offset + size > len(blob):
                raise _problem(f"{path}.parameters.binary_data_size", "runs past the end of the body")
            raw = blob[offset:offset + size]
            inputs[name] = np.frombuffer(raw, dtype=dtype.newbyteorder("<")).reshape(shape)
            offset += size
        elif "data" in item:
            inputs[name] = _json_tensor(item["data"], dtype, shape, path)
        else:
            raise _problem(path, "needs 'data' or parameters.binary_data_size")
    if offset != len(blob):
        raise _problem("body", f"{len(blob) - offset} binary bytes are not claimed by any input")
    outputs, binary = _requested_outputs(doc)
    request_id = doc.get("id", "")
    return InferRequest(id=str(request_id) if isinstance(request_id, str | int) else "", inputs=inputs,
                        outputs=outputs, binary_outputs=binary,
                        binary_default=bool(_parameters(doc, "").get("binary_data_output", False)))


def _requested_outputs(doc: Mapping[str, Any]) -> tuple[tuple[str, ...] | None, frozenset[str]]:
    raw = doc.get("outputs")
    if raw is None:
        return None, frozenset()
    if not isinstance(raw, list):
        raise _problem("outputs", "must be a list")
    names, binary = [], set()
    for index, item in enumerate(raw):
        if not isinstance(item, Mapping) or not isinstance(item.get("name"), str):
            raise _problem(f"outputs[{index}].name", "must be a string")
        names.append(item["name"])
        if _parameters(item, f"outputs[{index}]").get("binary_data"):
            binary.add(item["name"])
    return tuple(names), frozenset(binary)


def encode_response(model_name: str, model_version: str, request: InferRequest,
                    outputs: Mapping[str, np.ndarray]) -> tuple[bytes, dict[str, str]]:
    """The response body and its extra headers (``Inference-Header-Content-Length`` when some
    output goes back as binary data). ``outputs`` in the model's order; only the requested
    ones are sent (an unknown requested name is InvalidInput naming it)."""
    wanted: Sequence[str] = request.outputs if request.outputs is not None else list(outputs)
    missing = [name for name in wanted if name not in outputs]
    if missing:
        raise _problem("outputs", f"the model has no output {missing[0]!r} (it has {sorted(outputs)})")
    docs, blobs = [], []
    for name in wanted:
        array = np.ascontiguousarray(outputs[name])
        doc: dict[str, Any] = {"name": name, "shape": list(array.shape), "datatype": datatype_of(array.dtype)}
        if request.binary(name):
            raw = array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
            doc["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        else:
            doc["data"] = array.reshape(-1).tolist()
        docs.append(doc)
    head = json.dumps({"model_name": model_name, "model_version": model_version, "id": request.id,
                       "outputs": docs}, separators=(",", ":")).encode()
    if not blobs:
        return head, {"Content-Type": "application/json"}
    return head + b"".join(blobs), {HEADER_LENGTH: str(len(head)), "Content-Type": "application/octet-stream"}


def tensor_metadata(signature: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """``[{name, datatype, shape}]`` of a registry signature's inputs or outputs (symbolic
    dimensions as -1, the protocol's "variable")."""
    return [{"name": str(t.get("name")), "datatype": datatype_of(str(t.get("dtype") or "float32")),
             "shape": [d if isinstance(d, int) and not isinstance(d, bool) and d >= 0 else -1
                       for d in t.get("shape") or []]}
            for t in signature]


def bearer_matches(authorization: str, key: str) -> bool:
    """Whether an ``Authorization`` header is ``Bearer <key>`` (constant-time; the one rule the
    cluster's v2 gateway and the entry node's both apply to a service whose callers must sign).
    Compared as bytes: ``hmac.compare_digest`` raises on non-ASCII text, and a header may carry
    any latin-1 character."""
    scheme, _, token = authorization.strip().partition(" ")
    return scheme.lower() == "bearer" and bool(key) and hmac.compare_digest(
        token.strip().encode("latin-1", "replace"), key.encode("latin-1", "replace"))


def check_inputs(specs: Sequence[Mapping[str, Any]] | None, inputs: Mapping[str, np.ndarray]) -> None:
    """InvalidInput naming the field when ``inputs`` (in request order) cannot feed ``specs``:
    an unknown name, a missing input, another datatype, another rank or fixed dimension.
    ``specs`` None: nothing known to check against (the stage answers for itself)."""
    if specs is None:
        return
    wanted = {str(s["name"]): s for s in specs}
    for index, (name, array) in enumerate(inputs.items()):
        spec = wanted.get(name)
        path = f"inputs[{index}]"
        if spec is None:
            raise _problem(f"{path}.name", f"the model has no input {name!r} (it takes {sorted(wanted)})")
        try:
            expected = datatype_of(str(spec["dtype"]))
        except InvalidInput:
            expected = ""
        if expected and datatype_of(array.dtype) != expected:
            raise _problem(f"{path}.datatype",
                           f"is {datatype_of(array.dtype)}, input {name!r} takes {expected}")
        shape = list(spec.get("shape") or [])
        fixed = [d if isinstance(d, int) and not isinstance(d, bool) and d > 0 else None for d in shape]
        if len(array.shape) != len(shape) or any(f is not None and f != d for f, d in zip(fixed, array.shape,
                                                                                           strict=True)):
            raise _problem(f"{path}.shape", f"is {list(array.shape)}, input {name!r} takes "
                       f"{[d if d is not None else -1 for d in fixed]}")
    missing = [name for name in wanted if name not in inputs]
    if missing:
        raise _problem("inputs", f"missing input {missing[0]!r} (the model takes {list(wanted)})")
