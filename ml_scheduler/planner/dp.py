"""Exact latency and bottleneck DPs over device-class count vectors (subsets are the special case).

Why: choosing which devices, in what order, and where to cut is NP-hard in general, but exact
DPs are cheap at our sizes (partitioning.md §4, §7): over device *subsets* (EdgeShard) for
<= ~10 distinct devices, over *counts per device class* (PipeEdge) for many devices of few
types. One engine does both: a subset is a count vector whose classes all have size 1.

State ``g[c][t][q]``: best cost with ops ``[0, q)`` placed, ``c`` = devices used per class
(``|c| = sum(c)`` stages), last stage on class ``t``. ``P_u`` = prefix sums of class ``u``'s
op times, ``hop(t->u, q)`` = rtt + cut_bytes[q] / bandwidth, ``W_u(q') = [L_u(q'), q'-1]`` the
memory window (tables.py). Adding a stage on a fresh member of class ``u`` (``c_u < cap_u``):

Latency (sum):
    h[c][u][q]      = min_t (g[c][t][q] + hop(t->u, q)) - P_u[q]
    g[c+e_u][u][q'] = P_u[q'] + min_{q in W_u(q')} h[c][u][q]          (sliding-window minimum)
Bottleneck (max):
    A[c][u][q]      = min_t max(g[c][t][q], hop(t->u, q))
    g[c+e_u][u][q'] = min_{q in W_u(q')} max(A[c][u][q], P_u[q'] - P_u[q])  (windows.window_minmax)
Start: ``g[e_u][u][q'] = enter(u) (+ or max) P_u[q'] - P_u[0]`` when ``L_u(q') = 0`` and stage 0
may run on ``u`` (the pin). Answer: ``min_{c, t} g[c][t][n] (+ or max) leave(t)`` over
``|c| <= max_partitions``. Levels ``|c| = s`` are processed together, vectorised over states.

Ties: fewer stages first, then lower device indices, then earlier cuts (reconstruction takes the
first argmin, classes are ordered by smallest member and a class's members are used in order).
Pruning: costs never decrease along a path, so after level s every partial cost >= the best
complete plan with <= s stages is dropped (it could at best tie, and ties go to fewer stages).
Cost O(#states * T * n * (T + log n)); #states = prod(cap_t + 1) restricted to |c| <= k.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from ml_scheduler.planner.tables import Tables
from ml_scheduler.planner.windows import window_min, window_minmax

logger = logging.getLogger(__name__)

# Above this many DP cells (#states * T * (n + 1)) an exact solve is refused: use fewer devices.
MAX_CELLS = 60_000_000


class PlannerTooLarge(ValueError):
    """The exact DP would exceed :data:`MAX_CELLS`; shortlist fewer devices or cap partitions."""


@dataclass(frozen=True)
class Solution:
    """An optimal stage sequence: device per stage and interior cut positions, plus DP cost."""

    cost: float
    devices: tuple[int, ...]
    positions: tuple[int, ...]


def _levels(caps: np.ndarray, max_stages: int) -> list[np.ndarray]:
    """Count vectors grouped by total, each level sorted by mixed-radix code."""
    grids = np.stack(np.meshgrid(*[np.arange(c + 1) for c in caps], indexing="ij"), axis=-1)
    vectors = grids.reshape(-1, len(caps))
    totals = vectors.sum(axis=1)
    return [vectors[totals == s] for s in range(max_stages + 1)]


def count_states(caps: np.ndarray, max_stages: int) -> int:
    """Number of count vectors with total <= max_stages (product of ``1 + x + ... + x^cap``)."""
    poly = np.zeros(max_stages + 1, dtype=object)
    poly[0] = 1
    for cap in caps:
        nxt = np.zeros_like(poly)
        for c in range(min(int(cap), max_stages) + 1):  # a class cannot supply more stages than allowed
            nxt[c:] += poly[: max_stages + 1 - c]
        poly = nxt
    return int(poly.sum())


class _Engine:
    def __init__(self, tables: Tables, objective: str) -> None:
        self.tb = tables
        self.latency = objective == "latency"
        caps = tables.caps
        cells = count_states(caps, tables.max_stages) * tables.n_classes * (tables.n_ops + 1)
        if cells > MAX_CELLS:
            raise PlannerTooLarge(f"exact DP needs {cells} cells (limit {MAX_CELLS})")
        self.radix = np.concatenate([[1], np.cumprod(caps + 1)[:-1]]).astype(np.int64)
        self.levels = []
        self.codes = []
        for level in _levels(caps, tables.max_stages):
            codes = level @ self.radix
            order = np.argsort(codes)
            self.levels.append(level[order])
            self.codes.append(codes[order])
        self.g: list[np.ndarray] = []
        self.bound = np.inf  # best complete plan so far (pruning)
        self.finals: list[np.ndarray] = [np.full((1, tables.n_classes), np.inf)]  # per level, pre-pruning

    def _index(self, s: int, codes: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.codes[s], codes)

    def run(self) -> None:
        tb, n = self.tb, self.tb.n_ops
        n_classes = tb.n_classes
        self.g = [np.full((1, n_classes, n + 1), np.inf)]
        if len(self.levels) < 2:
            return
        first = np.full((len(self.levels[1]), n_classes, n + 1), np.inf)
        ends = np.arange(n + 1)
        for row, vector in enumerate(self.levels[1]):
            u = int(np.argmax(vector))
            if not tb.first_classes[u]:
                continue
            body = tb.prefix[u] - tb.prefix[u, 0]
            value = tb.enter[u] + body if self.latency else np.maximum(tb.enter[u], body)
            first[row, u] = np.where((tb.window_start[u] == 0) & (ends > 0), value, np.inf)
        self.g.append(first)
        self.bound = np.inf
        for s in range(1, len(self.levels) - 1):
            # Costs only grow along a path, so a prefix already >= the best complete plan found
            # with fewer stages can never win (ties go to fewer stages anyway): prune it.
            self.finals.append(self._final(s))
            self.bound = min(self.bound, float(self.finals[-1].min(initial=np.inf)))
            self.g[s][self.g[s] >= self.bound] = np.inf
            self.g.append(self._step(s))
        self.finals.append(self._final(len(self.g) - 1))

    def _step(self, s: int) -> np.ndarray:
        tb, n = self.tb, self.tb.n_ops
        current, vectors = self.g[s], self.levels[s]
        nxt = np.full((len(self.levels[s + 1]), tb.n_classes, n + 1), np.inf)
        alive = np.isfinite(current).any(axis=(1, 2))
        for u in range(tb.n_classes):
            rows = np.flatnonzero(alive & (vectors[:, u] < tb.caps[u]))
            if rows.size == 0:
                continue
            block = current[rows]  # (R, T, n+1)
            if self.latency:
                h = np.min(block + tb.hop[:, u][None], axis=1) - tb.prefix[u][None]
                value = tb.prefix[u][None] + window_min(h, tb.window_start[u])
            else:
                a = np.min(np.maximum(block, tb.hop[:, u][None]), axis=1)
                value = window_minmax(a, tb.prefix[u], tb.window_start[u], self.bound)
            target = self._index(s + 1, self.codes[s][rows] + self.radix[u])
            nxt[target, u] = value
        return nxt

    # -- answer and reconstruction -------------------------------------------------------
    def _final(self, s: int) -> np.ndarray:
        end = self.g[s][:, :, -1]
        return end + self.tb.leave[None] if self.latency else np.maximum(end, self.tb.leave[None])

    def _predecessor(self, s: int, row: int, u: int, end: int) -> tuple[int, int, int]:
        """(previous row, previous class, start q) of the stage on ``u`` ending at ``end``."""
        tb = self.tb
        prev_row = int(self._index(s - 1, np.array([self.codes[s][row] - self.radix[u]]))[0])
        lo = int(tb.window_start[u, end])
        block = self.g[s - 1][prev_row][:, lo:end]  # (T, width)
        hop = tb.hop[:, u, lo:end]
        if self.latency:
            via = block + hop
            score = via.min(axis=0) - tb.prefix[u, lo:end]
        else:
            via = np.maximum(block, hop)
            score = np.maximum(via.min(axis=0), tb.prefix[u, end] - tb.prefix[u, lo:end])
        q = int(np.argmin(score))
        return prev_row, int(np.argmin(via[:, q])), lo + q

    def rebuild(self, s: int, row: int, t: int) -> tuple[list[int], list[int]]:
        """Class per stage and interior cut positions of the state (level s, row, last class t)."""
        classes, starts, end = [t], [], self.tb.n_ops
        while s > 1:
            row, prev, start = self._predecessor(s, row, t, end)
            starts.append(start)
            classes.append(prev)
            s, t, end = s - 1, prev, start
        return classes[::-1], starts[::-1]

    def solve(self) -> Solution | None:
        self.run()
        finals = list(enumerate(self.finals))[1:]
        best = min((float(f.min()) for _, f in finals if f.size), default=np.inf)
        if not np.isfinite(best):
            return None
        slack = 1e-12 * max(abs(best), 1.0)
        choices: list[tuple[int, tuple[int, ...], tuple[int, ...], float]] = []
        for s, final in finals:
            rows, ts = np.nonzero(final <= best + slack)
            for row, t in list(zip(rows.tolist(), ts.tolist()))[:64]:
                classes, positions = self.rebuild(s, row, t)
                devices = self._devices(classes)
                choices.append((s, tuple(devices), tuple(positions), float(final[row, t])))
            if choices:
                break  # fewer stages win ties
        s, devices, positions, cost = min(choices)
        return Solution(cost, devices, positions)

    def _devices(self, classes: list[int]) -> list[int]:
        used = [0] * self.tb.n_classes
        devices = []
        for t in classes:
            devices.append(self.tb.members[t][used[t]])
            used[t] += 1
        return devices


def solve(tables: Tables, objective: str) -> Solution | None:
    """The optimal plan under ``tables`` for ``objective`` ("latency" or "throughput"), or None."""
    return _Engine(tables, objective).solve()
