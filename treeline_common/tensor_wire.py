"""Tensor framing of the node-to-node data plane (pyzmq multipart messages).

A message is one small JSON header frame followed by one raw frame per tensor, in the
order the header lists them. Raw frames are the arrays' own C-contiguous buffers, so
senders pass them to ``send_multipart(..., copy=False)`` and receivers wrap the received
``zmq.Frame.buffer`` with :func:`numpy.frombuffer` — no copy on either side.

The header carries the request id, the stage key it is addressed to, ``kind``
(``request`` | ``reply`` | ``error``), per-tensor name/dtype/shape and ``timings``: each
stage adds ``{stage_key: compute_ms}`` so the caller sees where the time went.
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
        )


def pack(
    kind: str,
    request_id: str,
    tensors: Mapping[str, np.ndarray],
    *,
    stage: str = "",
    timings: Mapping[str, float] | None = None,
    error: str = "",
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
            for name, a in zip(tensors.keys(), arrays)
        ],
        timings=dict(timings or {}),
        error=error,
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
    for spec, frame in zip(header.tensors, frames[1:]):
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
