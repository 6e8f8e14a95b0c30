"""A server's checkpoint: the aggregated parameters after a completed round, as ``.npz`` bytes.

The arrays keep the model's ``state_dict`` order (``arr_0`` ... ``arr_<n-1>``); nothing is
pickled (:func:`numpy.load` with ``allow_pickle=False``), so a checkpoint from the wire cannot
run code. The server writes one per round (:func:`write`), the node engine sends it with the
round's report, and a resumed server reads it back (:func:`read`).
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np


def to_bytes(arrays: list[np.ndarray]) -> bytes:
    """``arrays`` (any shapes, cast to float32) as one ``.npz``."""
    buffer = io.BytesIO()
    np.savez(buffer, *[np.asarray(a, dtype=np.float32) for a in arrays])
    return buffer.getvalue()


def from_bytes(data: bytes) -> list[np.ndarray]:
    """The arrays of :func:`to_bytes`, in order; ValueError when ``data`` is not such a file."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            names = sorted(npz.files, key=lambda n: int(n.removeprefix("arr_")))
            return [np.asarray(npz[n], dtype=np.float32) for n in names]
    except (OSError, ValueError, EOFError) as exc:
        raise ValueError(f"not a parameter checkpoint: {exc}") from None


def write(arrays: list[np.ndarray], path: Path) -> Path:
    """Write atomically (a reader never sees half a file); returns ``path``."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(to_bytes(arrays))
    os.replace(tmp, path)
    return path


def read(path: Path) -> list[np.ndarray]:
    """:func:`from_bytes` of a file; OSError when it cannot be read."""
    return from_bytes(path.read_bytes())
