"""FLOP-balanced contiguous partitioning of an op chain.

Why: a pipeline is as fast as its slowest stage, so the first, device-agnostic strategy
minimises the largest partition's FLOPs (the min-max "linear partitioning" problem). It is
solved exactly rather than greedily:

1. the optimal bottleneck ``B*`` by binary search over integers with a greedy feasibility
   test (O(n log total_flops));
2. among all splits whose partitions each stay within ``B*``, the one with the fewest bytes
   crossing the cuts, by a DP with a sliding-window minimum (O(n·k)).

So ties between equally balanced splits are broken toward cheap cuts (block boundaries rather
than the 6x-expanded tensors inside MobileNetV2 blocks); remaining ties go to the earliest cut.
Pure and deterministic.
"""

from __future__ import annotations

import itertools
import logging
from collections import deque
from collections.abc import Sequence

from ml_scheduler.graph import ModelGraph

logger = logging.getLogger(__name__)


def _fits(flops: Sequence[int], k: int, bound: int) -> bool:
    """Whether ``flops`` splits into at most ``k`` contiguous runs each summing to <= ``bound``."""
    parts, current = 1, 0
    for value in flops:
        if value > bound:
            return False
        if current + value > bound:
            parts += 1
            current = value
            if parts > k:
                return False
        else:
            current += value
    return True


def _bottleneck(flops: Sequence[int], k: int) -> int:
    low, high = max(flops, default=0), sum(flops)
    while low < high:
        mid = (low + high) // 2
        if _fits(flops, k, mid):
            high = mid
        else:
            low = mid + 1
    return low


def optimal_bottleneck(graph: ModelGraph, k: int) -> int:
    """The smallest achievable max-partition FLOPs when cutting ``graph`` into ``k`` parts."""
    return _bottleneck([op.flops for op in graph.ops], k)


def min_max_split(flops: Sequence[int], cut_cost: Sequence[int], k: int) -> list[int]:
    """Split items with non-negative ``flops`` into ``k`` non-empty contiguous runs.

    Returns the ``k-1`` increasing boundaries ``p`` (a run ends before item ``p``) that minimise
    the largest run's sum and, among those, the sum of ``cut_cost[p]`` (``len(cut_cost) ==
    len(flops) + 1``); remaining ties go to earlier boundaries. Raises ValueError unless
    ``1 <= k <= len(flops)``.
    """
    n = len(flops)
    if k < 1 or k > max(n, 1):
        raise ValueError(f"k must be in 1..{n} for {n} ops, got {k}")
    if len(cut_cost) != n + 1:
        raise ValueError("cut_cost needs one entry per position 0..n")
    if any(value < 0 for value in flops):
        raise ValueError("flops must be non-negative")
    if k == 1:
        return []
    bound = _bottleneck(flops, k)
    prefix = [0]
    for op_flops in flops:
        prefix.append(prefix[-1] + op_flops)
    inf = float("inf")
    # best[p]: min total cut cost splitting items[:p] into j runs, each within bound.
    best: list[float] = [0.0 if p >= 1 and prefix[p] <= bound else inf for p in range(n + 1)]
    choice: list[list[int]] = []  # choice[j-2][p] = start of the j-th run ending at p
    for j in range(2, k + 1):
        new_best: list[float] = [inf] * (n + 1)
        back = [-1] * (n + 1)
        window: deque[int] = deque()  # candidate previous ends q, increasing value
        lo, next_q = 0, j - 1
        for p in range(j, n + 1):
            while next_q <= p - 1:  # q ranges up to p-1 (the run is non-empty)
                value = best[next_q] + cut_cost[next_q]
                while window and best[window[-1]] + cut_cost[window[-1]] > value:
                    window.pop()
                window.append(next_q)
                next_q += 1
            while prefix[p] - prefix[lo] > bound:  # run items[q:p] must fit: q >= lo
                lo += 1
            while window and window[0] < lo:
                window.popleft()
            if window:
                q = window[0]
                new_best[p] = best[q] + cut_cost[q]
                back[p] = q
        best = new_best
        choice.append(back)
    if best[n] == inf:  # cannot happen for k <= n: the bound came from a feasible split
        raise AssertionError("no split within the optimal bottleneck")
    positions: list[int] = []
    end = n
    for back in reversed(choice):
        end = back[end]
        positions.append(end)
    positions.reverse()
    return positions


def balanced_cuts(graph: ModelGraph, k: int) -> list[int]:
    """``k-1`` strictly increasing cut positions minimising the largest partition's FLOPs.

    Among optimal splits, the total ``cut_bytes`` is minimised. ``k == 1`` gives ``[]``.
    Raises ValueError unless ``1 <= k <= len(graph.ops)`` (every partition holds >= 1 op).
    """
    n = len(graph.ops)
    if not graph.uncuttable:
        positions = min_max_split([op.flops for op in graph.ops],
                                  [graph.cut_bytes(p) for p in range(n + 1)], k)
    else:  # split runs of ops between the allowed positions instead, at most one partition per run
        bounds = [0, *graph.cut_positions(), n]
        runs = list(itertools.pairwise(bounds))
        chosen = min_max_split([graph.range_flops(a, b) for a, b in runs],
                               [graph.cut_bytes(p) for p in bounds], min(k, len(runs)))
        positions = [bounds[i] for i in chosen]
    logger.debug("balanced_cuts k=%d positions=%s", k, positions)
    return positions
