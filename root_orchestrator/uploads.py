"""Request bodies at the root's edge: size limits per route, uploads streamed to disk, ONNX headers.

- Limits: every body is at most :data:`treeline_common.http.JSON_BODY_LIMIT` (1 MiB: SLAs, aliases,
  registrations) unless :func:`body_limits` names its route: model uploads and artifact PUTs take
  up to ``TREELINE_MAX_MODEL_MB`` (default 2048 MiB); a cluster push and a profile up to a few MiB.
  Over the limit is 413 ``PAYLOAD_TOO_LARGE`` naming it, from the Content-Length before anything
  is read, or as soon as a chunked body passes it.
- :func:`spool_body` copies ``request.stream`` in 1 MiB chunks to a temp file while hashing, so
  a 200 MB upload costs the root about one chunk of memory, not 200 MB.
- :func:`load_onnx_header` validates a spooled ONNX file and returns the model without its
  weights (initializer data, node bodies), which is all the signature needs: parsing the whole
  protobuf would hold the model in memory twice.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import onnx

from root_orchestrator.onnx_signature import load_onnx
from treeline_common.errors import InvalidInput, UnsupportedMediaType
from treeline_common.http import too_large

log = logging.getLogger(__name__)

MODEL_LIMIT_ENV = "TREELINE_MAX_MODEL_MB"
DEFAULT_MAX_MODEL_MB = 2048
PUSH_LIMIT = 16 << 20  # a cluster push: every job with its placement and last events
PROFILE_LIMIT = 8 << 20  # a ProfileResult: one op time per ONNX node
CHUNK = 1 << 20
# the model-upload and artifact routes (Flask endpoints) take the model limit
MODEL_ENDPOINTS = ("models.create_version", "models.put_artifact")


def model_limit_mb(environ: Mapping[str, str] | None = None) -> int:
    """``TREELINE_MAX_MODEL_MB`` (a positive integer) or the default; InvalidInput naming it."""
    raw = (os.environ if environ is None else environ).get(MODEL_LIMIT_ENV)
    if raw is None or not raw.strip():
        return DEFAULT_MAX_MODEL_MB
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value <= 0:
        raise InvalidInput(f"{MODEL_LIMIT_ENV} must be a positive integer (MiB), not {raw!r}",
                           [{"path": MODEL_LIMIT_ENV, "message": "not a positive integer"}])
    return value


def body_limits(model_bytes: int) -> dict[str, int]:
    """``{endpoint: max body bytes}`` of the routes that take more than the 1 MiB default."""
    limits = dict.fromkeys(MODEL_ENDPOINTS, model_bytes)
    limits["clusters.information"] = PUSH_LIMIT
    limits["profiles.put_profile"] = PROFILE_LIMIT
    return limits


@dataclass
class SpooledUpload:
    """A request body copied to ``path`` (the caller removes it with :meth:`discard`)."""

    path: Path
    sha256: str
    size: int

    def discard(self) -> None:
        self.path.unlink(missing_ok=True)


def check_bytes_type(request: Any) -> None:
    """415 for a form body: the routes that take bytes want them raw (``application/octet-stream``;
    ``curl --data-binary @model.onnx`` works, ``curl -F`` does not)."""
    if (request.mimetype or "").lower() == "multipart/form-data":
        raise UnsupportedMediaType("send the model's raw bytes, not a multipart form", [
            {"path": "Content-Type", "message": "got multipart/form-data",
             "accepted": ["application/octet-stream"]}])


def spool_body(request: Any, directory: Path | None = None) -> SpooledUpload:
    """Stream the request body to a temp file in ``directory`` while hashing; 413 past the
    request's limit (``request.max_content_length``), whether or not a Content-Length says so."""
    limit = request.max_content_length
    if limit is not None and request.content_length is not None and request.content_length > limit:
        raise too_large(limit, "upload")
    if directory is not None:
        directory.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=directory, prefix="upload-")
    path = Path(name)
    digest = hashlib.sha256()
    size = 0
    try:
        with os.fdopen(fd, "wb") as out:
            stream = request.stream
            while True:
                chunk = stream.read(CHUNK)
                if not chunk:
                    break
                size += len(chunk)
                if limit is not None and size > limit:
                    raise too_large(limit, "upload")
                digest.update(chunk)
                out.write(chunk)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return SpooledUpload(path, digest.hexdigest(), size)


# -- ONNX without its weights ------------------------------------------------------------------

# field numbers (onnx/onnx.proto)
_MODEL_GRAPH, _MODEL_TRAINING_INFO, _MODEL_FUNCTIONS = 7, 20, 25
_GRAPH_NODE, _GRAPH_INITIALIZER, _GRAPH_SPARSE_INITIALIZER = 1, 5, 15
_GRAPH_KEEP = frozenset({2, 10, 11, 12})  # name, doc_string, input, output
_TENSOR_KEEP = frozenset({1, 2, 3, 8, 12, 13, 14, 16})  # all but the data fields
_SPARSE_VALUES, _SPARSE_INDICES, _SPARSE_DIMS = 1, 2, 3
_MAX_KEPT_FIELD = 64 << 20  # a header field larger than this is not a header
_MAX_NODE_CHECK = 4 << 20  # dropped fields up to this size are parsed to check them (not the weights)
_GRAPH_CHECKED = {_GRAPH_NODE: onnx.NodeProto, _GRAPH_INITIALIZER: onnx.TensorProto, 13: onnx.ValueInfoProto,
                  14: onnx.TensorAnnotation, _GRAPH_SPARSE_INITIALIZER: onnx.SparseTensorProto}
_MODEL_CHECKED = {_MODEL_TRAINING_INFO: onnx.TrainingInfoProto, _MODEL_FUNCTIONS: onnx.FunctionProto}


class _Reader:
    """Protocol-buffer wire fields of the file region ``[start, end)``, read without loading the
    payloads: each field is yielded with its offsets, then the reader seeks past it (so a caller
    may read or descend into the field in between)."""

    def __init__(self, fh: IO[bytes], start: int, end: int) -> None:
        self.fh = fh
        self.start = start
        self.end = end

    def _varint(self) -> int:
        shift = result = 0
        while True:
            byte = self.fh.read(1)
            if not byte:
                raise ValueError("truncated varint")
            result |= (byte[0] & 0x7F) << shift
            if not byte[0] & 0x80:
                return result
            shift += 7
            if shift > 63:
                raise ValueError("varint too long")

    def fields(self) -> Iterator[tuple[int, int, int, int, int]]:
        """``(field, wire_type, tag_start, value_start, value_end)`` per field."""
        self.fh.seek(self.start)
        while self.fh.tell() < self.end:
            start = self.fh.tell()
            tag = self._varint()
            field, wire = tag >> 3, tag & 7
            if field == 0:
                raise ValueError(f"field number 0 at offset {start}")
            if wire == 0:
                self._varint()
                value_start = value_end = self.fh.tell()
            elif wire in (1, 5):
                value_start = self.fh.tell()
                value_end = value_start + (8 if wire == 1 else 4)
            elif wire == 2:
                length = self._varint()
                value_start = self.fh.tell()
                value_end = value_start + length
            else:
                raise ValueError(f"unsupported wire type {wire} at offset {start}")
            if value_end > self.end:
                raise ValueError(f"field {field} at offset {start} runs past its message")
            yield field, wire, start, value_start, value_end
            self.fh.seek(value_end)


def _read(fh: IO[bytes], start: int, end: int, what: str = "field") -> bytes:
    if end - start > _MAX_KEPT_FIELD:
        raise ValueError(f"{what} of {end - start} bytes is too large for a model header")
    fh.seek(start)
    data = fh.read(end - start)
    if len(data) != end - start:
        raise ValueError(f"truncated {what}")
    return data


def _tag(field: int, payload: bytes) -> bytes:
    """``payload`` as length-delimited field ``field``."""
    out = bytearray()
    for value in ((field << 3) | 2, len(payload)):
        while True:
            byte = value & 0x7F
            value >>= 7
            out.append(byte | (0x80 if value else 0))
            if not value:
                break
    return bytes(out) + payload


def _keep(fh: IO[bytes], start: int, end: int, keep: frozenset[int]) -> bytes:
    """The message at ``[start, end)`` with only the fields in ``keep``."""
    return b"".join(_read(fh, tag_start, value_end) for field, _w, tag_start, _vs, value_end
                    in _Reader(fh, start, end).fields() if field in keep)


def _sparse_stub(fh: IO[bytes], start: int, end: int) -> bytes:
    out = []
    for field, _wire, tag_start, value_start, value_end in _Reader(fh, start, end).fields():
        if field in (_SPARSE_VALUES, _SPARSE_INDICES):
            out.append(_tag(field, _keep(fh, value_start, value_end, _TENSOR_KEEP)))
        elif field == _SPARSE_DIMS:
            out.append(_read(fh, tag_start, value_end))
    return b"".join(out)


def _check(fh: IO[bytes], message: Any, start: int, end: int) -> None:
    """Parse a field the header drops as ``message`` when it is small (garbage is refused here as
    a whole-model parse would refuse it); big ones (weights) are only walked, not parsed."""
    if message is not None and end - start <= _MAX_NODE_CHECK:
        message.FromString(_read(fh, start, end, message.__name__))


def _graph_stub(fh: IO[bytes], start: int, end: int) -> bytes:
    """The graph without nodes and with weightless initializers."""
    out = []
    for field, wire, tag_start, value_start, value_end in _Reader(fh, start, end).fields():
        if wire != 2:  # an unknown field to protobuf too: dropped
            continue
        _check(fh, _GRAPH_CHECKED.get(field), value_start, value_end)
        if field == _GRAPH_INITIALIZER:
            out.append(_tag(field, _keep(fh, value_start, value_end, _TENSOR_KEEP)))
        elif field == _GRAPH_SPARSE_INITIALIZER:
            out.append(_tag(field, _sparse_stub(fh, value_start, value_end)))
        elif field in _GRAPH_KEEP:
            out.append(_read(fh, tag_start, value_end, f"graph field {field}"))
    return b"".join(out)


def load_onnx_header(path: Path) -> onnx.ModelProto:
    """The ONNX model in ``path`` without its weights or nodes: IR version, opsets, graph inputs,
    outputs and initializer names/types (enough for :func:`extract_signature`). Checked as
    :func:`load_onnx` checks a whole model (InvalidInput naming ``body``), plus the wire structure
    of the file down to each initializer, and every node up to 4 MiB. Memory: the header, never
    the weights."""
    size = path.stat().st_size
    if size == 0:
        return load_onnx(b"")  # raises "empty body"
    header = []
    try:
        with path.open("rb") as fh:
            for field, wire, tag_start, value_start, value_end in _Reader(fh, 0, size).fields():
                if field == _MODEL_GRAPH and wire == 2:
                    header.append(_tag(field, _graph_stub(fh, value_start, value_end)))
                elif field in (_MODEL_TRAINING_INFO, _MODEL_FUNCTIONS):
                    if wire == 2:
                        _check(fh, _MODEL_CHECKED[field], value_start, value_end)
                elif field != _MODEL_GRAPH:
                    header.append(_read(fh, tag_start, value_end, f"model field {field}"))
    except Exception as exc:  # noqa: BLE001 - ValueError from the reader, DecodeError and others from protobuf
        raise InvalidInput("body is not a valid ONNX model", [
            {"path": "body", "message": f"cannot parse as ONNX: {type(exc).__name__}: {exc}"}]) from None
    return load_onnx(b"".join(header))
