"""Answers that go straight back to the entry instead of retracing every hop.

A request that crosses nodes carries ``reply_to`` (:class:`~treeline_common.tensor_wire.ReplyTo`):
the endpoint of the node holding the caller (the **entry** of that request: the node the
caller sent it to) and the entry's id for it. Each later stage acknowledges receipt to the
stage that sent it (``ack``), which then forgets the request; the last stage, or any stage
that fails or cannot reach the next one, sends an ``answer`` to ``reply_to``. So a middle
node keeps no per-request state once the next stage has the request, and its death no
longer loses answers computed after it.

This module holds both ends, free of sockets:

- :class:`AwaitedAnswers` is the entry's side: what it expects (request id, the data key the
  answer must be signed with, whether it must come over CURVE) and ONE deadline for the
  whole pipeline. When the entry's next node acknowledges a request as its last stage (the
  ack's ``last``), that node is the request's *holder*: if the entry's link to it goes down,
  the request is failed at once with ``unreachable`` (fail fast, as when replies retraced
  the hops); a request that went on past the next node waits for the deadline instead, since
  a later stage may still answer it. An answer is admitted only if it matches a request awaited here, is
  signed as expected and came over the expected socket; it is admitted once (a duplicate
  finds nothing awaited and is dropped).
- :func:`answer_frames` turns a stage's reply or error frames into an answer for
  ``reply_to`` (signed with the stage's data key when it has one); :func:`caller_frames`
  turns an admitted answer back into the ``reply``/``error`` the caller expects.

Threading model: owned by the data plane's poll thread; no locks. Time is passed in.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from treeline_common.tensor_wire import (
    DOWNSTREAM_TIMEOUT,
    STAGE_FAILED,
    UNREACHABLE,
    ReplyTo,
    TensorHeader,
    authenticator,
    frames_digest,
    pack,
    signed_by,
)

log = logging.getLogger(__name__)

Frames = list[Any]


@dataclass
class _Awaited:
    deadline: float  # monotonic s
    key: bytes  # the data key the answer must be signed with (b"": unsigned deployment)
    curve: bool  # the answer must arrive on the CURVE socket (encrypted deployment)
    pipeline: str  # names the next stage and its node, for the timeout error
    holder: str = ""  # endpoint of the next node when it said it answers itself (its ack's ``last``)


class AwaitedAnswers:
    """Requests this node forwarded as their entry, whose answers come straight back here."""

    def __init__(self, timeout: float) -> None:
        self._timeout = timeout
        self._awaited: dict[str, _Awaited] = {}

    def __len__(self) -> int:
        return len(self._awaited)

    def expect(self, request_id: str, now: float, *, key: bytes, curve: bool, pipeline: str) -> None:
        """Await the answer of ``request_id`` until ``now + timeout`` (the whole pipeline's deadline)."""
        self._awaited[request_id] = _Awaited(now + self._timeout, key, curve, pipeline)

    def held_by(self, request_id: str, endpoint: str) -> None:
        """The node at ``endpoint`` acknowledged ``request_id`` as its last stage."""
        awaited = self._awaited.get(request_id)
        if awaited is not None:
            awaited.holder = endpoint

    def lost(self, endpoint: str, reason: str) -> list[tuple[str, Frames]]:
        """The link to ``endpoint`` went down: ``(request id, unreachable error)`` for each it held.

        Those requests are no longer awaited.
        """
        gone = [rid for rid, awaited in self._awaited.items() if awaited.holder == endpoint]
        errors: list[tuple[str, Frames]] = []
        for rid in gone:
            awaited = self._awaited.pop(rid)
            message = f"{awaited.pipeline} unreachable before it answered: {reason}"
            errors.append((rid, pack("error", rid, {}, error=message, code=UNREACHABLE)))
        return errors

    def forget(self, request_id: str) -> None:
        """The request ended another way (an error made here, or shutdown); idempotent."""
        self._awaited.pop(request_id, None)

    def admit(self, header: TensorHeader, tensor_frames: Sequence[Any], over_curve: bool) -> str:
        """Why this answer is refused ("" when admitted: it is then no longer awaited)."""
        awaited = self._awaited.get(header.request_id)
        if awaited is None:
            return f"answer {header.request_id!r} matches no request awaited here (late, duplicate or forged)"
        if awaited.curve and not over_curve:
            return f"answer {header.request_id!r} came over plain TCP; this deployment's are encrypted"
        if awaited.key and not signed_by(header, tensor_frames, [awaited.key]):
            return f"answer {header.request_id!r} is not signed with the deployment's data key"
        del self._awaited[header.request_id]
        return ""

    def expired(self, now: float) -> list[tuple[str, Frames]]:
        """Every awaited answer past its deadline, forgotten: ``(request id, downstream_timeout error)``."""
        late = [rid for rid, awaited in self._awaited.items() if awaited.deadline <= now]
        errors: list[tuple[str, Frames]] = []
        for rid in late:
            awaited = self._awaited.pop(rid)
            message = (f"no answer from the pipeline after this node ({awaited.pipeline}) within "
                       f"{self._timeout:.1f}s")
            errors.append((rid, pack("error", rid, {}, error=message, code=DOWNSTREAM_TIMEOUT)))
        return errors


def answer_frames(frames: Sequence[Any], reply_to: ReplyTo, key: bytes) -> Frames:
    """A reply or error (``[header, tensor...]``) as an ``answer`` to ``reply_to``, signed with ``key``.

    The tensor frames are passed on untouched; only the header is rewritten.
    """
    header = TensorHeader.from_bytes(_buffer(frames[0]))
    tensors = list(frames[1:])
    header.kind, header.request_id, header.reply_to, header.auth = "answer", reply_to.request_id, None, ""
    if header.error and not header.code:
        header.code = STAGE_FAILED  # every error answer carries a code (it is what marks it an error)
    if key:
        header.auth = authenticator(key, header, frames_digest(tensors))
    return [header.to_bytes(), *tensors]


def caller_frames(header: TensorHeader, tensor_frames: Sequence[Any]) -> tuple[Frames, str]:
    """An admitted answer as the caller's ``reply`` or ``error`` frames, and that kind."""
    header.kind = "error" if header.code else "reply"
    header.auth = ""
    return [header.to_bytes(), *tensor_frames], header.kind


def _buffer(frame: Any) -> memoryview:
    buf = getattr(frame, "buffer", None)  # zmq.Frame received with copy=False
    return memoryview(buf if buf is not None else frame)
