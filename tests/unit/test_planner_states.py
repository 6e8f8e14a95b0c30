"""State counting of the class-count DP (a hypothesis case once broke it: cap > max_stages)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from ml_scheduler.planner.dp import count_states


@pytest.mark.parametrize("caps,max_stages", [([4], 2), ([1, 1], 2), ([3, 2], 3), ([5, 1, 2], 1), ([2, 2, 2], 6)])
def test_count_states_matches_enumeration(caps: list[int], max_stages: int) -> None:
    expected = sum(1 for counts in itertools.product(*(range(c + 1) for c in caps)) if sum(counts) <= max_stages)
    assert count_states(np.array(caps), max_stages) == expected
