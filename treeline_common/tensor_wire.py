"""Tensor framing of the node-to-node data plane (pyzmq multipart messages).

A message is one small JSON header frame followed by one raw frame per tensor, in the
order the header lists them. Raw frames are the arrays' own C-contiguous buffers, so
senders pass them to ``send_multipart(..., copy=False)`` and receivers wrap the received
``zmq.Frame.buffer`` with :func:`numpy.frombuffer` — no copy on either side.

The header carries the request id, the stage key it is addressed to, ``kind``
(``request`` | ``reply`` | ``error``), per-tensor name/dtype/shape and ``timings``: each
stage adds ``{stage_key: compute_ms}`` so the caller sees where the time went.
An ``error`` message also carries ``code``, one of :data:`ERROR_CODES`, so a caller can
tell what is worth retrying (:data:`RETRYABLE`) without parsing the message; a header
without a code (an older peer) decodes with ``code=""``, which is treated as not retryable.
This module imports numpy only; sockets live in the node engine and the client.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

WIRE_VERSION = 1
KINDS = ("request", "reply", "error")

# Error codes of ``error`` messages: written once here, used by the node and every client.
UNKNOWN_STAGE = "unknown_stage"  # the addressed stage is not served here (moved, not yet deployed)
UNREACHABLE = "unreachable"  # a later stage's node could not be reached (connection refused or lost)
DOWNSTREAM_TIMEOUT = "downstream_timeout"  # a later stage did not answer in time
OVERLOADED = "overloaded"  # the node already has its bound of requests in flight
STAGE_FAILED = "stage_failed"  # the partition raised on these inputs (retrying cannot help)
BAD_REQUEST = "bad_request"  # malformed message or not a request
ERROR_CODES = (UNKNOWN_STAGE, UNREACHABLE, DOWNSTREAM_TIMEOUT, OVERLOADED, STAGE_FAILED, BAD_REQUEST)
RETRYABLE = frozenset({UNKNOWN_STAGE, UNREACHABLE, DOWNSTREAM_TIMEOUT, OVERLOADED})


class FramingError(ValueError):
    """A multipart message that does not follow the framing."""


@dataclass
class TensorHeader:
    """Header frame of one data-plane message."""

    kind: str
    request_id: str
    stage: str = ""
    tensors: list[dict[str, Any]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    error: str = ""
    code: str = ""  # error messages: one of ERROR_CODES

    def to_bytes(self) -> bytes:
        return json.dumps(
            {
                "v": WIRE_VERSION,
                "kind": self.kind,
                "request_id": self.request_id,
                "stage": self.stage,
                "tensors": self.tensors,
                "timings": self.timings,
                "error": self.error,
                "code": self.code,
            },
            separators=(",", ":"),
        ).encode()

    @classmethod
    def from_bytes(cls, raw: bytes | memoryview) -> TensorHeader:
        try:
            body = json.loads(bytes(raw))
        except (ValueError, UnicodeDecodeError) as exc:
            raise FramingError(f"header is not JSON: {exc}") from None
        if not isinstance(body, dict) or body.get("v") != WIRE_VERSION:
            raise FramingError(f"header version {body.get('v') if isinstance(body, dict) else None!r}")
        if body.get("kind") not in KINDS:
            raise FramingError(f"header kind {body.get('kind')!r} not in {KINDS}")
        return cls(
            kind=body["kind"],
            request_id=str(body.get("request_id", "")),
            stage=str(body.get("stage", "")),
            tensors=list(body.get("tensors", [])),
            timings=dict(body.get("timings", {})),
            error=str(body.get("error", "")),
            code=str(body.get("code", "")),
        )


def pack(
    kind: str,
    request_id: str,
    tensors: Mapping[str, np.ndarray],
    *,
    stage: str = "",
    timings: Mapping[str, float] | None = None,
    error: str = "",
    code: str = "",
) -> list[Any]:
    """Frames for one message: ``[header, tensor0, tensor1, ...]``.

    Tensor frames are the arrays themselves (made C-contiguous only if they are not), so
    ``send_multipart(frames, copy=False)`` sends their memory as it is.
    """
    # np.asarray(order="C"), not np.ascontiguousarray: the latter turns 0-d scalars into shape (1,)
    arrays = [np.asarray(a, order="C") for a in tensors.values()]
    header = TensorHeader(
        kind=kind,
        request_id=request_id,
        stage=stage,
        tensors=[
            {"name": name, "dtype": a.dtype.str, "shape": list(a.shape)}
            for name, a in zip(tensors.keys(), arrays, strict=True)
        ],
        timings=dict(timings or {}),
        error=error,
        code=code,
    )
    return [header.to_bytes(), *arrays]


def unpack(frames: Sequence[Any]) -> tuple[TensorHeader, dict[str, np.ndarray]]:
    """Parse ``[header, tensor...]`` frames (``bytes``, ``memoryview`` or ``zmq.Frame``).

    Arrays are read-only views over the received buffers; copy one before writing to it.
    """
    if not frames:
        raise FramingError("empty message")
    header = TensorHeader.from_bytes(_buffer(frames[0]))
    if len(frames) - 1 != len(header.tensors):
        raise FramingError(f"header lists {len(header.tensors)} tensors, message has {len(frames) - 1}")
    arrays: dict[str, np.ndarray] = {}
    for spec, frame in zip(header.tensors, frames[1:], strict=True):
        try:
            dtype = np.dtype(spec["dtype"])
            shape = tuple(int(d) for d in spec["shape"])
            arrays[str(spec["name"])] = np.frombuffer(_buffer(frame), dtype=dtype).reshape(shape)
        except (KeyError, TypeError, ValueError) as exc:
            raise FramingError(f"tensor {spec!r}: {exc}") from None
    return header, arrays


def payload_bytes(tensors: Mapping[str, np.ndarray]) -> int:
    """Bytes of raw tensor data a message carries (without the header)."""
    return int(sum(a.nbytes for a in tensors.values()))


def _buffer(frame: Any) -> memoryview:
    buf = getattr(frame, "buffer", None)  # zmq.Frame received with copy=False
    if buf is not None:
        return memoryview(buf)
    return memoryview(frame)
