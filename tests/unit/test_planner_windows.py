"""The vectorised window queries against their definitions."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from ml_scheduler.planner.windows import window_min, window_minmax


def _starts(rng: np.random.Generator, cols: int) -> np.ndarray:
    """Non-decreasing window starts with starts[q] <= q (some windows empty)."""
    starts = np.maximum.accumulate(rng.integers(0, cols, cols))
    if rng.random() < 0.3:
        starts[:] = 0
    return np.minimum(starts, np.arange(cols))


@settings(max_examples=150, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_windows_match_naive(seed: int) -> None:
    rng = np.random.default_rng(seed)
    rows, cols = int(rng.integers(1, 4)), int(rng.integers(1, 40))
    x = rng.choice([0.0, 1.0, 2.5, 7.0, np.inf], size=(rows, cols))
    p = np.concatenate([[0.0], np.cumsum(rng.choice([0.0, 0.5, 1.0, 3.0], size=cols - 1))])
    starts = _starts(rng, cols)
    got_min, got_minmax = window_min(x, starts), window_minmax(x, p, starts)
    for r in range(rows):
        for end in range(1, cols):
            window = range(starts[end], end)
            want_min = min((x[r, q] for q in window), default=np.inf)
            want_minmax = min((max(x[r, q], p[end] - p[q]) for q in window), default=np.inf)
            assert got_min[r, end] == want_min
            assert got_minmax[r, end] == want_minmax
