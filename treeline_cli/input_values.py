"""Valid request values for every input of a deployed model, generated or read from a file.

A placement names each model input as ``{name, shape, dtype[, index_limit]}`` (docs/contracts.md;
``index_limit`` is the row count of the table an integer input indexes, e.g. a vocabulary). Random
values of the right dtype are not enough: a transformer given ids 0..99 sees padding tokens, and
ids beyond its vocabulary fail. :func:`input_kind` classifies each input by dtype, name and rank,
and :func:`generate` draws values valid for that kind:

=============  ======================================================  ===========================
kind           which inputs                                             values
=============  ======================================================  ===========================
``mask``       integer/bool, name contains ``mask``                     ones
``token_type`` integer, name contains ``token_type`` or ``segment``     zeros
``position``   integer, name contains ``position``                      0, 1, ... along the last axis
``token_ids``  integer, name contains ``ids`` or ``token``              1 .. index_limit-1 (else
                                                                        1..999): no 0 (padding)
``index``      other integer with an ``index_limit``                    0 .. index_limit-1
``integer``    other integer                                            0 .. 99 (0 .. 255 for uint8)
``image``      float, 4 dimensions                                      uniform in [0, 1)
``float``      other float                                              standard normal
=============  ======================================================  ===========================

Or the caller's own values: :func:`load_npz` reads one array per input name from an ``.npz``
file (one sample of exactly the input's shape, or a stack of samples along a new first axis,
sent in turn), and says in one line which array is missing or mis-shaped.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

DEFAULT_VOCAB = 1000  # token ids drawn below this when the model's vocabulary is unknown
InputSpec = Mapping[str, Any]
Sample = dict[str, np.ndarray]


class InputFileError(ValueError):
    """An ``--inputs`` file that cannot feed the service; the message is one line naming the array."""


def placement_inputs(placement: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The input specs of a placement document: ``inputs``, else the single ``input`` (older
    clusters); ``[]`` when it names none."""
    inputs = placement.get("inputs")
    if isinstance(inputs, list) and inputs:
        return [dict(i) for i in inputs if isinstance(i, Mapping)]
    single = placement.get("input")
    return [dict(single)] if isinstance(single, Mapping) and single else []


def _as_specs(specs: InputSpec | Sequence[InputSpec]) -> list[InputSpec]:
    return [specs] if isinstance(specs, Mapping) else list(specs)


def input_kind(spec: InputSpec) -> str:
    """The value kind of one input spec (see the module table)."""
    dtype = np.dtype(str(spec.get("dtype") or "float32"))
    name = str(spec.get("name") or "").lower()
    if dtype.kind == "f":
        return "image" if len(spec.get("shape") or ()) == 4 else "float"
    if "mask" in name:
        return "mask"
    if dtype.kind == "b":
        return "integer"
    if "token_type" in name or "segment" in name:
        return "token_type"
    if "position" in name:
        return "position"
    if "ids" in name or "token" in name:
        return "token_ids"
    return "index" if spec.get("index_limit") else "integer"


def generate(spec: InputSpec, rng: np.random.Generator) -> np.ndarray:
    """One array for ``spec`` (shape as declared; symbolic or missing dims as 1), valid for its kind."""
    shape = tuple(int(d) if isinstance(d, int) and d > 0 else 1 for d in spec.get("shape") or ())
    dtype = np.dtype(str(spec.get("dtype") or "float32"))
    kind = input_kind(spec)
    limit = int(spec.get("index_limit") or 0)
    if kind == "image":
        return rng.random(shape).astype(dtype)
    if kind == "float":
        return rng.standard_normal(shape).astype(dtype)
    if kind == "mask":
        return np.ones(shape, dtype=dtype)
    if kind == "token_type":
        return np.zeros(shape, dtype=dtype)
    if kind == "position":
        last = shape[-1] if shape else 1
        return np.broadcast_to(np.arange(last), shape).astype(dtype) if shape else np.zeros((), dtype)
    if dtype.kind == "b":
        return np.ones(shape, dtype=dtype)
    if kind == "token_ids":
        high = limit if limit > 1 else DEFAULT_VOCAB
        return rng.integers(1, high, size=shape).astype(dtype)
    high = limit if kind == "index" else (256 if dtype == np.uint8 else 100)
    return rng.integers(0, high, size=shape).astype(dtype)


def random_inputs(specs: InputSpec | Sequence[InputSpec], n: int, seed: int = 0) -> Iterator[Sample]:
    """``n`` samples, one array per input (a single spec is a one-input model), valid per kind."""
    rng = np.random.default_rng(seed)
    chosen = _as_specs(specs)
    for _ in range(n):
        yield {str(spec["name"]): generate(spec, rng) for spec in chosen}


def load_npz(path: str | os.PathLike[str], specs: Sequence[InputSpec]) -> list[Sample]:
    """The samples in ``path``: per input, an array of its exact shape (one sample) or with one
    more leading axis of k samples (every input the same k). Arrays are cast to the input's
    dtype when numpy calls that safe within a kind (float64 -> float32), else refused.

    Raises :class:`InputFileError` (one line: the file, the array, what was expected).
    """
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: np.asarray(archive[name]) for name in archive.files}
    except FileNotFoundError:
        raise InputFileError(f"{path}: no such file") from None
    except (OSError, ValueError, EOFError) as exc:
        # np.load reads a text file as a pickle and says so: not the hint a user needs
        reason = "" if "pickle" in str(exc) else f" ({exc})"
        raise InputFileError(f"{path}: not a .npz file of arrays{reason}; write one with "
                             "numpy.savez(path, <input name>=array, ...)") from None
    counts: dict[str, int] = {}
    cast: dict[str, np.ndarray] = {}
    for spec in specs:
        name, want = str(spec["name"]), tuple(int(d) for d in spec.get("shape") or ())
        dtype = np.dtype(str(spec.get("dtype") or "float32"))
        expected = f"{dtype.name} {list(want)}"
        if name not in arrays:
            raise InputFileError(f"{path} has no array {name!r} (expected {expected}); "
                                 f"it has {sorted(arrays)}")
        array = arrays[name]
        if want and array.shape == want:
            counts[name] = 0
        elif want and array.shape[1:] == want:
            counts[name] = array.shape[0]
        elif not want:
            counts[name] = 0
        else:
            raise InputFileError(f"array {name!r} in {path} has shape {list(array.shape)}; the service "
                                 f"expects {list(want)} (or [k, {', '.join(map(str, want))}] for k samples)")
        if array.dtype != dtype and not np.can_cast(array.dtype, dtype, casting="same_kind"):
            raise InputFileError(f"array {name!r} in {path} has dtype {array.dtype.name}; the service "
                                 f"expects {dtype.name}")
        cast[name] = array.astype(dtype, copy=False)
    stacked = {c for c in counts.values() if c}
    if len(stacked) > 1:
        raise InputFileError(f"{path}: arrays hold different numbers of samples: "
                             + ", ".join(f"{k}: {v}" for k, v in counts.items()))
    k = stacked.pop() if stacked else 0
    if k == 0:
        return [cast]
    return [{name: (a[i] if counts[name] else a) for name, a in cast.items()} for i in range(k)]


def describe(sample: Mapping[str, np.ndarray]) -> str:
    """``input_ids int64 [1, 16] in [101, 29871]; attention_mask ...``: what a request carried."""
    parts = []
    for name, array in sample.items():
        values = np.asarray(array)
        span = (f" in [{values.min():.6g}, {values.max():.6g}]"
                if values.size and values.dtype.kind in "biuf" else "")
        parts.append(f"{name} {values.dtype.name} {list(values.shape)}{span}")
    return "; ".join(parts) if parts else "no inputs"
