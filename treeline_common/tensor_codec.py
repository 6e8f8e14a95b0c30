"""Lossy codecs for boundary tensors on a slow link: ``fp16`` and ``int8`` (per-tensor scale).

A stage whose route to the next node names a codec (``NextStage.compression``) encodes the
tensors it sends; the receiving stage decodes them before its partition runs. The encoding is
*self-describing*, so the receiver needs no side channel and a stage that does not compress
still reads a compressed request:

==========  ===================================================  ======================================
codec       what travels for a float32 tensor ``x``             decoded (float32, same name ``x``)
==========  ===================================================  ======================================
``fp16``    ``x::fp16``: ``x.astype(float16)``                   ``x::fp16`` cast back to float32
``int8``    ``x::int8``: ``q = clip(rint(x / s), -127, 127)``    ``q * s``
            and ``x::scale``: float32 scalar ``s = max|x| / 127``
==========  ===================================================  ======================================

Only float32 tensors are compressed (the partition that receives them declared float32, so
decoding restores exactly the dtype its session expects); every other tensor passes untouched.
A tensor a codec cannot carry faithfully is sent uncompressed instead: ``int8`` refuses a tensor
with a NaN or an infinity (one inf would make every other value 0), ``fp16`` one whose finite
values exceed float16's range (65504). An all-zero tensor gets ``s = 1``.

Error bounds (what the property tests check): fp16 round trip ``|y - x| <= |x| * 2**-11`` in the
normal range and ``<= 2**-25`` below it (float16 subnormals), NaN and inf kept; int8 round trip
``|y - x| <= s / 2`` (plus float32 rounding). Bytes: fp16 halves a tensor, int8 quarters it plus
a 4-byte scale (:func:`encoded_bytes`, what the planner charges).

Pure numpy; no I/O. Decoding raises :class:`CodecError` (a ``ValueError``) naming the tensor
when a compressed tensor is malformed (an ``::int8`` without its ``::scale``, a scale that is
not a finite positive float32 scalar).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

NONE = ""
FP16 = "fp16"
INT8 = "int8"
CODECS = (FP16, INT8)  # the codecs a route may name, besides NONE
FP16_SUFFIX = "::fp16"
INT8_SUFFIX = "::int8"
SCALE_SUFFIX = "::scale"
INT8_LIMIT = 127
FP16_MAX = float(np.finfo(np.float16).max)  # 65504
SCALE_BYTES = 4  # one float32 per int8 tensor


class CodecError(ValueError):
    """A compressed tensor that cannot be decoded; the message names it."""


def check_codec(codec: str) -> str:
    """``codec`` if it is ``""``, ``fp16`` or ``int8``; ValueError listing the known ones otherwise."""
    if codec != NONE and codec not in CODECS:
        raise ValueError(f"unknown compression {codec!r}; known: {', '.join(CODECS)} (or empty)")
    return codec


def encoded_bytes(nbytes: float, codec: str) -> float:
    """Bytes a float32 payload of ``nbytes`` takes under ``codec`` (int8: one scale per tensor,
    counted once here: the planner knows bytes, not tensor counts)."""
    check_codec(codec)
    if codec == FP16:
        return nbytes / 2.0
    if codec == INT8:
        return nbytes / 4.0 + SCALE_BYTES
    return float(nbytes)


def _fp16(x: np.ndarray) -> np.ndarray | None:
    """``x`` as float16, or None when a finite value is beyond float16's range."""
    finite = x[np.isfinite(x)]
    if finite.size and float(np.abs(finite).max()) > FP16_MAX:
        return None
    return x.astype(np.float16)


def _int8(x: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """``(q, scale)`` of ``x``, or None when ``x`` holds a NaN or an infinity."""
    if x.size and not np.isfinite(x).all():
        return None
    peak = float(np.abs(x).max()) if x.size else 0.0
    scale = np.float32(peak / INT8_LIMIT) if peak > 0.0 else np.float32(1.0)
    if not np.isfinite(scale) or scale <= 0.0:  # subnormal peaks underflow to 0 in float32
        scale = np.float32(1.0) if peak == 0.0 else np.float32(np.finfo(np.float32).tiny)
    q = np.clip(np.rint(x / scale), -INT8_LIMIT, INT8_LIMIT).astype(np.int8)
    return q, np.asarray(scale, dtype=np.float32)


def encode(tensors: Mapping[str, np.ndarray], codec: str) -> dict[str, np.ndarray]:
    """``tensors`` with every float32 tensor compressed by ``codec`` (module table).

    Non-float32 tensors, tensors already encoded and tensors the codec refuses (module docstring)
    pass unchanged, in place and order; ``codec == ""`` returns a plain copy of the mapping.
    """
    check_codec(codec)
    out: dict[str, np.ndarray] = {}
    scales = {name[: -len(INT8_SUFFIX)] + SCALE_SUFFIX for name, x in tensors.items()
              if name.endswith(INT8_SUFFIX) and x.dtype == np.int8}
    for name, x in tensors.items():
        if codec == NONE or x.dtype != np.float32 or name in scales:
            out[name] = x
        elif codec == FP16:
            half = _fp16(x)
            if half is None:
                out[name] = x
            else:
                out[name + FP16_SUFFIX] = half
        else:
            packed = _int8(x)
            if packed is None:
                out[name] = x
            else:
                out[name + INT8_SUFFIX], out[name + SCALE_SUFFIX] = packed
    return out


def _scale_of(tensors: Mapping[str, np.ndarray], base: str) -> np.float32:
    scale = tensors.get(base + SCALE_SUFFIX)
    if scale is None:
        raise CodecError(f"tensor {base + INT8_SUFFIX!r} comes without its scale {base + SCALE_SUFFIX!r}")
    if scale.dtype != np.float32 or scale.size != 1:
        raise CodecError(f"tensor {base + SCALE_SUFFIX!r} must be one float32, not {scale.dtype} "
                         f"of shape {list(scale.shape)}")
    value = np.float32(scale.reshape(()))
    if not np.isfinite(value) or value <= 0.0:
        raise CodecError(f"tensor {base + SCALE_SUFFIX!r} must be finite and positive, not {float(value)!r}")
    return value


def is_encoded(tensors: Mapping[str, np.ndarray]) -> bool:
    """Whether any tensor of ``tensors`` is a compressed one (cheap: names and dtypes only)."""
    return any(_encoded_base(name, x) is not None for name, x in tensors.items())


def _encoded_base(name: str, x: np.ndarray) -> str | None:
    """The plain name a compressed tensor stands for, or None for a plain tensor."""
    if name.endswith(FP16_SUFFIX) and x.dtype == np.float16:
        return name[: -len(FP16_SUFFIX)]
    if name.endswith(INT8_SUFFIX) and x.dtype == np.int8:
        return name[: -len(INT8_SUFFIX)]
    return None


def decode(tensors: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``tensors`` with every compressed tensor restored to float32 under its own name.

    Plain tensors pass unchanged (the same array objects: nothing is copied when nothing was
    compressed). The ``::scale`` companion of an int8 tensor is consumed; a scale without its
    int8 tensor passes as a plain tensor. CodecError for a malformed compressed tensor.
    """
    if not is_encoded(tensors):
        return dict(tensors)
    consumed = {name[: -len(INT8_SUFFIX)] + SCALE_SUFFIX for name, x in tensors.items()
                if _encoded_base(name, x) is not None and name.endswith(INT8_SUFFIX)}
    out: dict[str, np.ndarray] = {}
    for name, x in tensors.items():
        if name in consumed:
            continue
        base = _encoded_base(name, x)
        if base is None:
            out[name] = x
        elif name.endswith(FP16_SUFFIX):
            out[base] = x.astype(np.float32)
        else:
            out[base] = x.astype(np.float32) * _scale_of(tensors, base)
    return out


def entries_for(tensors: Mapping[str, np.ndarray], name: str) -> dict[str, np.ndarray] | None:
    """The entries that carry the tensor ``name`` in ``tensors``: itself, or its compressed form
    (``name::fp16``, or ``name::int8`` with ``name::scale``); None when it is in neither form.

    How a stage passes on a tensor it received (a skip connection) without decoding it.
    """
    if name in tensors:
        return {name: tensors[name]}
    half = tensors.get(name + FP16_SUFFIX)
    if half is not None and half.dtype == np.float16:
        return {name + FP16_SUFFIX: half}
    q, scale = tensors.get(name + INT8_SUFFIX), tensors.get(name + SCALE_SUFFIX)
    if q is not None and scale is not None and q.dtype == np.int8:
        return {name + INT8_SUFFIX: q, name + SCALE_SUFFIX: scale}
    return None


def round_trip(tensors: Mapping[str, np.ndarray], codec: str) -> dict[str, np.ndarray]:
    """``decode(encode(tensors, codec))``: what the receiver computes on (measuring a codec's effect)."""
    return decode(encode(tensors, codec))
