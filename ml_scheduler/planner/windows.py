"""Batched range queries over monotone windows ``[L(q'), q'-1]``, the inner loop of both DPs.

Why a separate module: the DPs spend almost all their time here, so these are written once,
vectorised over a batch of rows (one row per (device set, next device) pair) and tested on
their own.

- :func:`window_min`: ``out[r, q'] = min(x[r, L(q') : q'])`` via a sparse table (doubling
  levels ``M_j[q] = min(x[q : q + 2^j])``; a window of width w is covered by two level-
  ``floor(log2 w)`` blocks). Prefix windows (``L == 0``) take a single cumulative minimum.
- :func:`window_minmax`: ``out[r, q'] = min over q in the window of max(a[r, q], p[q'] - p[q])``
  for non-decreasing ``p``. With ``S(q) = min(a[q : q'])`` (non-decreasing in q) and
  ``f(q) = p[q'] - p[q]`` (non-increasing), ``min_q max(a[q], f(q)) = min_q max(S(q), f(q))``
  (for each q the argmin r >= q of ``a`` has ``f(r) <= f(q)``; conversely ``S <= a``), and the
  latter is attained next to the crossing ``q* = min{q : S(q) >= f(q)}``:
  ``out = min(S(q*), f(q* - 1))``. ``q*`` is found by a binary search run for all (r, q') at once.
Empty windows give ``inf``.
"""

from __future__ import annotations

import numpy as np


def _sparse_table(x: np.ndarray, levels: int) -> np.ndarray:
    """(R, levels, C) with ``[:, j, q] = min(x[:, q : q + 2^j])`` (clipped at the end)."""
    rows, cols = x.shape
    table = np.empty((rows, levels, cols))
    table[:, 0] = x
    for j in range(1, levels):
        half = 1 << (j - 1)
        prev = table[:, j - 1]
        table[:, j, : cols - half] = np.minimum(prev[:, : cols - half], prev[:, half:])
        table[:, j, cols - half:] = prev[:, cols - half:]
    return table


def _floor_log2(width: np.ndarray) -> np.ndarray:
    return np.floor(np.log2(np.maximum(width, 1))).astype(np.int64)


def window_min(x: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """``out[:, q'] = min(x[:, starts[q']:q'])`` for q' = 0..C-1 (``x`` is (R, C); ``starts[0]`` unused)."""
    rows, cols = x.shape
    out = np.full((rows, cols), np.inf)
    ends = np.arange(cols)
    width = ends - starts
    valid = np.flatnonzero(width[1:] > 0) + 1
    if valid.size == 0 or rows == 0:
        return out
    if not starts[valid].any():
        out[:, 1:] = np.minimum.accumulate(x[:, :-1], axis=1)
        out[:, 1:][:, width[1:] <= 0] = np.inf
        return out
    levels = int(_floor_log2(width[valid]).max()) + 1
    flat = _sparse_table(x, levels).reshape(rows, levels * cols)
    level = _floor_log2(width[valid])
    left = level * cols + starts[valid]
    right = level * cols + valid - (1 << level)
    out[:, valid] = np.minimum(flat[:, left], flat[:, right])
    return out


def window_minmax(a: np.ndarray, p: np.ndarray, starts: np.ndarray, bound: float = np.inf,
                  mask: np.ndarray | None = None) -> np.ndarray:
    """``out[:, q'] = min_{q in [starts[q'], q')} max(a[:, q], p[q'] - p[q])`` (module docstring).

    Entries whose value is provably ``>= bound`` (window minimum of ``a`` or the last op alone
    already reaches it) are returned as ``inf`` without searching: callers prune them anyway.
    With ``mask`` (rows, cols) bool, only entries where it is True are computed (others ``inf``).
    """
    rows, cols = a.shape
    out = np.full((rows, cols), np.inf)
    ends = np.arange(cols)
    valid = np.flatnonzero(ends[1:] - starts[1:] > 0) + 1
    if valid.size == 0 or rows == 0:
        return out
    width_max = int((valid - starts[valid]).max())
    levels = int(_floor_log2(np.array([width_max]))[0]) + 1
    flat = _sparse_table(a, levels).ravel()
    log_table = _floor_log2(np.arange(cols + 1))
    # Only (row, end) pairs that can come out below ``bound`` are searched, as flat 1-D lists.
    wanted = np.broadcast_to(p[valid][None, :] - p[valid - 1][None, :] < bound, (rows, valid.size))
    if mask is not None:
        wanted = wanted & mask[:, valid]
    row_of, end = np.nonzero(wanted)
    end = valid[end]
    start = starts[end]
    row_base = row_of * (levels * cols)

    def suffix_min(q: np.ndarray) -> np.ndarray:  # min(a[q : end]) for q < end
        level = log_table[end - q]
        base = row_base + level * cols
        return np.minimum(flat[base + q], flat[base + end - (1 << level)])

    keep = suffix_min(start) < bound
    row_of, end, start, row_base = row_of[keep], end[keep], start[keep], row_base[keep]
    p_end = p[end]
    lo, hi = start.copy(), end.copy()
    for _ in range(width_max.bit_length() + 1):
        active = lo < hi
        if not active.any():
            break
        mid = np.where(active, (lo + hi) // 2, np.minimum(lo, end - 1))
        crossed = suffix_min(mid) >= p_end - p[mid]
        hi = np.where(active & crossed, mid, hi)
        lo = np.where(active & ~crossed, mid + 1, lo)
    best = np.where(lo < end, suffix_min(np.minimum(lo, end - 1)), np.inf)
    before = lo - 1
    best = np.where(before >= start, np.minimum(best, p_end - p[np.maximum(before, 0)]), best)
    out[row_of, end] = best
    return out
