"""Tensor framing of the node-to-node data plane (pyzmq multipart messages).

A message is one small JSON header frame followed by one raw frame per tensor, in the
order the header lists them. Raw frames are the arrays' own C-contiguous buffers, so
senders pass them to ``send_multipart(..., copy=False)`` and receivers wrap the received
``zmq.Frame.buffer`` with :func:`numpy.frombuffer` — no copy in Python on either side (the
node's sockets let libzmq copy frames under 1 MiB rather than share them: see
:mod:`node_engine.data_plane.sockets`).

The header carries the request id, the stage key it is addressed to, ``kind``
(``request`` | ``reply`` | ``error`` | ``ack`` | ``answer``), per-tensor name/dtype/shape and
``timings``: each stage adds ``{stage_key: compute_ms}`` so the caller sees where the time went.

**Answers go straight back.** A request forwarded between stages carries ``reply_to``
(:class:`ReplyTo`): the data-plane endpoint of the node that holds the caller (the entry),
its CURVE server key when that endpoint is a CURVE socket, and the entry's request id. The
next stage answers the sender with an ``ack`` (no tensors) as soon as it took the request
in, with ``last`` set when that node answers the request itself (its stages end there);
the last stage, or any stage that fails, sends an ``answer`` to ``reply_to``: request id =
``reply_to.request_id``, the reply's tensors and timings, or ``error`` and ``code`` (an
answer with a ``code`` is an error, one without is a reply). A header without ``reply_to``
(a caller, or an older peer) decodes with ``reply_to=None`` and is answered hop by hop.
An ``error`` message also carries ``code``, one of :data:`ERROR_CODES`, so a caller can
tell what is worth retrying (:data:`RETRYABLE`) without parsing the message; a header
without a code (an older peer) decodes with ``code=""``, which is treated as not retryable.

**Authentication.** A request may carry ``auth``: the authenticator :func:`authenticator`
computes with a 32-byte key (a deployment's data key, or its caller key):

    digest = SHA-256( for each tensor frame: 8-byte big-endian length || frame bytes )
    auth   = hex HMAC-SHA256( key, "treeline-dp/1\n" || canonical header || "\n" || digest )

where the canonical header is the JSON of ``[kind, request_id, stage, tensors, timings]``
(plus ``reply_to`` when present) with sorted keys and no spaces, rebuilt from the parsed
header on the receiving side (so it does not depend on how the sender spaced its JSON).
Everything a stage acts on is covered: the id, the addressed stage, every tensor's name,
dtype, shape and bytes, the timings, and where the answer goes (so a forwarded request's
answer cannot be redirected, nor a signed answer be moved to another request). Hashing the
frames once and keying only the short tail means a receiver that accepts several keys (an
entry stage) pays the frame hash once. HMAC-SHA256 was chosen over keyed BLAKE2b because
it measured faster here (SHA-NI: 60 us against 113 us for 100 KB;
``python -m benchmarks.dataplane``). A header without ``auth`` decodes with
``auth=""``; peers that predate it ignore the field. Replies are not authenticated: they
travel back over the connection the request came on. Answers are signed with the
deployment's data key, so the entry can refuse a forged one.

This module imports numpy and the standard library only; sockets live in the node
engine and the client.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

WIRE_VERSION = 1
KINDS = ("request", "reply", "error", "ack", "answer")

# Error codes of ``error`` messages: written once here, used by the node and every client.
UNKNOWN_STAGE = "unknown_stage"  # the addressed stage is not served here (moved, not yet deployed)
UNREACHABLE = "unreachable"  # a later stage's node could not be reached (connection refused or lost)
DOWNSTREAM_TIMEOUT = "downstream_timeout"  # a later stage did not answer in time
OVERLOADED = "overloaded"  # the node already has its bound of requests in flight
STAGE_FAILED = "stage_failed"  # the partition raised on these inputs (retrying cannot help)
BAD_REQUEST = "bad_request"  # malformed message or not a request
UNAUTHORIZED = "unauthorized"  # no valid authenticator for the stage, or not over the transport it demands
ERROR_CODES = (UNKNOWN_STAGE, UNREACHABLE, DOWNSTREAM_TIMEOUT, OVERLOADED, STAGE_FAILED, BAD_REQUEST,
               UNAUTHORIZED)
AUTH_CONTEXT = b"treeline-dp/1\n"  # domain separation of the authenticator (see the module docstring)
RETRYABLE = frozenset({UNKNOWN_STAGE, UNREACHABLE, DOWNSTREAM_TIMEOUT, OVERLOADED})


class FramingError(ValueError):
    """A multipart message that does not follow the framing."""


@dataclass(frozen=True)
class ReplyTo:
    """Where a forwarded request's answer goes: the entry node, and its id for the request there.

    ``endpoint`` is a ``tcp://`` data-plane endpoint; with ``curve_server_key`` (Z85, 40
    characters) it is that node's CURVE socket and the answer travels encrypted.
    """

    endpoint: str
    request_id: str
    curve_server_key: str = ""

    def to_json(self) -> dict[str, str]:
        body = {"endpoint": self.endpoint, "request_id": self.request_id}
        if self.curve_server_key:
            body["curve_server_key"] = self.curve_server_key
        return body

    @classmethod
    def from_json(cls, body: object) -> ReplyTo:
        """Decode and validate; FramingError naming the field and the reason."""
        if not isinstance(body, dict):
            raise FramingError(f"reply_to must be an object, got {type(body).__name__}")
        endpoint, request_id = body.get("endpoint"), body.get("request_id")
        key = body.get("curve_server_key", "")
        if not isinstance(endpoint, str) or not endpoint.startswith("tcp://") or len(endpoint) > 256:
            raise FramingError(f"reply_to.endpoint must be a tcp:// endpoint, got {endpoint!r:.80}")
        if not isinstance(request_id, str) or not request_id or len(request_id) > 256:
            raise FramingError(f"reply_to.request_id must be a non-empty string, got {request_id!r:.80}")
        if not isinstance(key, str) or len(key) not in (0, 40):
            raise FramingError("reply_to.curve_server_key must be a 40-character Z85 key or empty")
        return cls(endpoint, request_id, key)


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
    auth: str = ""  # requests, answers: hex authenticator (see the module docstring); "" when unsigned
    reply_to: ReplyTo | None = None  # forwarded requests: where the answer goes (None: back to the sender)
    last: bool = False  # acks: the acking node answers the request itself (the pipeline ends there)

    def to_bytes(self) -> bytes:
        body: dict[str, Any] = {
            "v": WIRE_VERSION,
            "kind": self.kind,
            "request_id": self.request_id,
            "stage": self.stage,
            "tensors": self.tensors,
            "timings": self.timings,
            "error": self.error,
            "code": self.code,
        }
        if self.auth:
            body["auth"] = self.auth
        if self.reply_to is not None:
            body["reply_to"] = self.reply_to.to_json()
        if self.last:
            body["last"] = True
        return json.dumps(body, separators=(",", ":")).encode()

    def signed_part(self) -> bytes:
        """The canonical bytes the authenticator covers (everything but ``error``, ``code``, ``auth``).

        ``reply_to`` is appended only when present, so headers without it sign as before.
        """
        part: list[Any] = [self.kind, self.request_id, self.stage, self.tensors, self.timings]
        if self.reply_to is not None:
            part.append(self.reply_to.to_json())
        return json.dumps(part, separators=(",", ":"), sort_keys=True).encode()

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
        reply_to, last = body.get("reply_to"), body.get("last", False)
        if not isinstance(last, bool):
            raise FramingError(f"header last must be true or false, got {last!r:.40}")
        return cls(
            kind=body["kind"],
            request_id=str(body.get("request_id", "")),
            stage=str(body.get("stage", "")),
            tensors=list(body.get("tensors", [])),
            timings=dict(body.get("timings", {})),
            error=str(body.get("error", "")),
            code=str(body.get("code", "")),
            auth=str(body.get("auth", "")),
            reply_to=None if reply_to is None else ReplyTo.from_json(reply_to),
            last=last,
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
    key: bytes = b"",
    reply_to: ReplyTo | None = None,
) -> list[Any]:
    """Frames for one message: ``[header, tensor0, tensor1, ...]``.

    Tensor frames are the arrays themselves (made C-contiguous only if they are not), so
    ``send_multipart(frames, copy=False)`` sends their memory as it is. With ``key`` the
    header carries the message's :func:`authenticator` under that key.
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
        reply_to=reply_to,
    )
    if key:
        header.auth = authenticator(key, header, frames_digest(arrays))
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


def frames_digest(frames: Sequence[Any]) -> bytes:
    """SHA-256 over the tensor frames, each prefixed by its length (arrays, bytes or ``zmq.Frame``)."""
    digest = hashlib.sha256()
    for frame in frames:
        view = _buffer(frame).cast("B")
        digest.update(len(view).to_bytes(8, "big"))
        digest.update(view)
    return digest.digest()


def authenticator(key: bytes, header: TensorHeader, digest: bytes) -> str:
    """The hex authenticator of a message under ``key``, given its :func:`frames_digest`."""
    mac = hmac.new(key, AUTH_CONTEXT, hashlib.sha256)
    mac.update(header.signed_part())
    mac.update(b"\n")
    mac.update(digest)
    return mac.hexdigest()


def signed_by(header: TensorHeader, tensor_frames: Sequence[Any], keys: Sequence[bytes]) -> bool:
    """Whether ``header.auth`` is the authenticator of this message under one of ``keys``.

    Constant-time comparison; the frames are hashed once whatever the number of keys.
    """
    if not header.auth or not keys:
        return False
    digest = frames_digest(tensor_frames)
    return any(hmac.compare_digest(authenticator(key, header, digest), header.auth) for key in keys)


def payload_bytes(tensors: Mapping[str, np.ndarray]) -> int:
    """Bytes of raw tensor data a message carries (without the header)."""
    return int(sum(a.nbytes for a in tensors.values()))


def _buffer(frame: Any) -> memoryview:
    buf = getattr(frame, "buffer", None)  # zmq.Frame received with copy=False
    if buf is not None:
        return memoryview(buf)
    return memoryview(frame)
