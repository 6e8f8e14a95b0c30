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

Bottleneck speed-up (exact): a hop-aware relaxation (_relaxed_feasible, one scalar "furthest
end" per state and class) gives a lower bound on the optimum that is usually the optimum; the DP
then runs under a limit U just above it, dropping every cell that cannot lie on a plan of cost
<= U (forward: g >= U; backward: _Viability, the remaining devices cannot cover the rest within
U). Kept cells keep their exact values, so when a plan <= U is found it is the optimum and the
reconstruction (ties included) is the plain DP's; otherwise U grows, ending with the plain DP.
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
_TOLERANCE = 1e-4  # relative precision of the first bottleneck guess


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
        self.limit = np.inf  # bottleneck: cells >= limit are dropped (solve's guesses)
        self.viable: _Viability | None = None
        self._down_cache: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}
        self.finals: list[np.ndarray] = [np.full((1, tables.n_classes), np.inf)]  # per level, pre-pruning

    def _index(self, s: int, codes: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.codes[s], codes)

    def _down(self, s: int, u: int) -> tuple[np.ndarray, np.ndarray]:
        """(rows of level s using class u, their rows in level s-1 without that stage), cached."""
        key = (s, u)
        if key not in self._down_cache:
            rows = np.flatnonzero(self.levels[s][:, u] > 0)
            self._down_cache[key] = (rows, self._index(s - 1, self.codes[s][rows] - self.radix[u]))
        return self._down_cache[key]

    def run(self, limit: float = np.inf) -> None:
        """Fill ``g`` level by level. With a finite ``limit`` (bottleneck only), every cell that
        cannot lie on a plan of cost <= ``limit`` is dropped (see :meth:`solve`)."""
        tb, n = self.tb, self.tb.n_ops
        n_classes = tb.n_classes
        self.limit = limit
        self.viable = None if self.latency or not np.isfinite(limit) else _Viability(self, limit)
        self.finals = [np.full((1, n_classes), np.inf)]
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
        if self.viable is not None:
            first[first >= limit] = np.inf
            viable = self.viable.mask(1, np.arange(len(self.levels[1])))
            first[~viable[:, None, :].repeat(n_classes, 1)] = np.inf
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
            target = self._index(s + 1, self.codes[s][rows] + self.radix[u])
            mask = None
            if self.viable is not None:
                mask = self.viable.mask(s + 1, target)
                keep = mask.any(axis=1)
                rows, target, mask = rows[keep], target[keep], mask[keep]
                if rows.size == 0:
                    continue
            block = current[rows]  # (R, T, n+1)
            if self.latency:
                h = np.min(block + tb.hop[:, u][None], axis=1) - tb.prefix[u][None]
                value = tb.prefix[u][None] + window_min(h, tb.window_start[u])
            else:
                a = np.min(np.maximum(block, tb.hop[:, u][None]), axis=1)
                cap = min(self.bound, self.limit)
                value = window_minmax(a, tb.prefix[u], tb.window_start[u], cap, mask)
                if np.isfinite(self.limit):
                    value[value >= self.limit] = np.inf
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
        if self.latency:
            self.run()
        else:
            # Bottleneck: guess an upper limit U from a cheap relaxation, run the DP keeping only
            # cells that can lie on a plan of cost <= U (exact for every such plan, see
            # _Viability), and accept when the best plan found is <= U; otherwise raise U. The
            # last guess is unlimited, the plain DP.
            for guess in _limits(self):
                limit = guess + 1e-9 * max(guess, 1.0) if np.isfinite(guess) else np.inf
                self.run(limit)
                found = min((float(f.min()) for f in self.finals[1:] if f.size), default=np.inf)
                if found <= guess:
                    break
        finals = list(enumerate(self.finals))[1:]
        best = min((float(f.min()) for _, f in finals if f.size), default=np.inf)
        if not np.isfinite(best):
            return None
        slack = 1e-12 * max(abs(best), 1.0)
        choices: list[tuple[int, tuple[int, ...], tuple[int, ...], float]] = []
        for s, final in finals:
            rows, ts = np.nonzero(final <= best + slack)
            for row, t in list(zip(rows.tolist(), ts.tolist(), strict=True))[:64]:
                classes, cut_at = self.rebuild(s, row, t)
                choices.append((s, tuple(self._devices(classes)), tuple(cut_at), float(final[row, t])))
            if choices:
                break  # fewer stages win ties
        _, devices, positions, cost = min(choices)
        return Solution(cost, devices, positions)

    def _devices(self, classes: list[int]) -> list[int]:
        used = [0] * self.tb.n_classes
        devices = []
        for t in classes:
            devices.append(self.tb.members[t][used[t]])
            used[t] += 1
        return devices


def _reach(tb: Tables, limit: float | np.ndarray) -> np.ndarray:
    """(T, n+1) ``R_u(q)``: furthest end q' >= q of one stage ``[q, q')`` on class u whose compute
    is <= ``limit`` and that fits u's memory window (q when none); hops ignored. Slightly generous
    (relative 1e-9 plus rounding slack), so it never excludes what the DP would accept. For an
    array of K limits: (K, T, n+1)."""
    limits = np.atleast_1d(np.asarray(limit, dtype=np.float64))
    n = tb.n_ops
    q = np.arange(n + 1)
    out = np.empty((limits.size, tb.n_classes, n + 1), dtype=np.int64)
    for u in range(tb.n_classes):
        p = tb.prefix[u]
        slack = limits * 1e-9 + 1e-12 * float(p[-1])
        tops = (p[None, :] + (limits + slack)[:, None]).ravel()
        by_cost = np.searchsorted(p, tops, side="right").reshape(limits.size, n + 1) - 1
        by_window = np.searchsorted(tb.window_start[u], q, side="right") - 1
        out[:, u] = np.maximum(np.minimum(by_cost, by_window[None]), q[None])
    return out if np.ndim(limit) else out[0]


class _Viability:
    """Which cells can still finish within ``limit`` (a relaxation that drops the hop terms).

    ``Reach[r](q)``: furthest position reachable from q with stages on at most the multiset r of
    remaining devices, each stage's compute <= limit: ``max(q, max_{u: r_u > 0}
    Reach[r - e_u](R_u(q)))`` (exact for the relaxation: R_u is non-decreasing, so the furthest
    first stage is best). A cell (c, t, q) on a plan of cost <= limit has ``Reach[caps - c](q) >=
    n``; so does every cell before it on that plan (Reach is monotone), and any predecessor whose
    score reaches the cell's value is such a cell, so dropping the others changes no kept value
    and no reconstruction. When all devices fit in max_stages the remaining multiset is exactly
    ``caps - c``; otherwise any class is allowed for each of the ``max_stages - s`` stages left.
    """

    def __init__(self, engine: _Engine, limit: float) -> None:
        tb = engine.tb
        self.engine, self.n = engine, tb.n_ops
        reach = _reach(tb, limit)
        self.total = int(tb.caps.sum())
        self.exact = self.total <= tb.max_stages
        positions = np.arange(self.n + 1)
        if self.exact:
            table = [positions[None]]
            for k in range(1, len(engine.levels)):
                vectors = engine.levels[k]
                cur = np.broadcast_to(positions, (len(vectors), self.n + 1)).copy()
                for u in range(tb.n_classes):
                    rows, src = engine._down(k, u)
                    if rows.size:
                        cur[rows] = np.maximum(cur[rows], table[k - 1][src][:, reach[u]])
                table.append(cur)
            self.ok = [t >= self.n for t in table]
        else:
            best = reach.max(axis=0)
            steps = [positions]
            for _ in range(tb.max_stages):
                steps.append(steps[-1][best])
            self.ok = [x >= self.n for x in steps]

    def mask(self, s: int, rows: np.ndarray) -> np.ndarray:
        """(len(rows), n+1) bool: cells of level s, those rows, that may still finish."""
        engine = self.engine
        if self.exact:
            k = self.total - s
            remaining = engine.tb.caps[None] - engine.levels[s][rows]
            return self.ok[k][engine._index(k, remaining @ engine.radix)]
        left = max(engine.tb.max_stages - s, 0)
        return np.broadcast_to(self.ok[left], (len(rows), self.n + 1))


def _relaxed_feasible(engine: _Engine, limits: np.ndarray) -> np.ndarray:
    """(K,) bool: whether a relaxation has a plan with every term <= ``limits[k]``.

    ``far[c][u]`` bounds the furthest end of a prefix with counts c and last class u; the next
    stage on v may start at the last position <= far whose hop u -> v is <= the limit (positions
    before far are treated as reachable) and runs up to ``_reach``. Every real plan within a
    limit passes, so the least feasible limit is a lower bound on the optimal bottleneck."""
    tb, n = engine.tb, engine.tb.n_ops
    k, n_classes, width = limits.size, engine.tb.n_classes, engine.tb.n_ops + 2
    # Position arrays get a leading column for "unreachable" (-1), so index = position + 1.
    reach = np.full((k, n_classes, width), -1, dtype=np.int64)
    reach[..., 1:] = _reach(tb, limits)
    hop_ok = np.full((k, n_classes, n_classes, width), -1, dtype=np.int64)
    hop_ok[..., 1:] = np.where(tb.hop[None] <= limits[:, None, None, None], np.arange(n + 1), -1)
    hop_ok[..., 1] = -1  # no cut at position 0
    last_ok = np.maximum.accumulate(hop_ok, axis=3).ravel()  # last allowed cut <= position
    reach_flat = reach.ravel()
    probe = np.arange(k)
    leave_ok = tb.leave[None] <= limits[:, None]  # (K, T)
    far = np.full((k, len(engine.levels[1]), n_classes), -1, dtype=np.int64)
    vectors = engine.levels[1]
    for u in range(n_classes):
        if tb.first_classes[u]:
            far[:, vectors[:, u] == 1, u] = np.where(tb.enter[u] <= limits, reach[:, u, 1], -1)[:, None]
    feasible: np.ndarray = np.asarray(((far >= n) & leave_ok[:, None, :]).any(axis=(1, 2)))
    for s in range(2, len(engine.levels)):
        if feasible.all():
            break
        cur = np.full((k, len(engine.levels[s]), n_classes), -1, dtype=np.int64)
        for u in range(n_classes):
            rows, src = engine._down(s, u)
            if rows.size == 0:
                continue
            hop_base = ((probe[:, None] * n_classes + np.arange(n_classes)[None]) * n_classes + u) * width + 1
            start = last_ok[far[:, src] + hop_base[:, None, :]].max(axis=2)  # (K, R)
            cur[:, rows, u] = reach_flat[start + ((probe * n_classes + u) * width + 1)[:, None]]
        far = cur
        feasible |= ((far >= n) & leave_ok[:, None, :]).any(axis=(1, 2))
    return feasible


def _limits(engine: _Engine) -> list[float]:
    """Increasing guesses of the optimal bottleneck, ending with ``inf`` (see _Engine.solve).

    The first is (just above) the least limit at which :func:`_relaxed_feasible` holds, a lower
    bound on the optimum that is usually the optimum itself; found by a 8-ary search."""
    tb = engine.tb
    if len(engine.levels) < 2:
        return [np.inf]
    finite = lambda x: x[np.isfinite(x)]  # noqa: E731
    hi = float(tb.prefix[:, -1].max()) + float(finite(tb.enter).max(initial=0.0)) \
        + float(finite(tb.leave).max(initial=0.0)) + 1.0
    if not _relaxed_feasible(engine, np.array([hi]))[0]:
        return [np.inf]
    lo = 0.0
    for _ in range(30):
        if hi - lo <= _TOLERANCE * hi:
            break
        probes = lo + (hi - lo) * np.arange(1, 8) / 8
        ok = _relaxed_feasible(engine, probes)
        first = int(np.argmax(ok)) if ok.any() else probes.size
        hi = float(probes[first]) if first < probes.size else hi
        lo = float(probes[first - 1]) if first > 0 else lo
    return [hi, hi * 1.02, hi * 1.1, hi * 1.5, np.inf]


def solve(tables: Tables, objective: str) -> Solution | None:
    """The optimal plan under ``tables`` for ``objective`` ("latency" or "throughput"), or None."""
    return _Engine(tables, objective).solve()
