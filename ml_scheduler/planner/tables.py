"""Per-problem lookup tables the exact DPs share: device classes, prefix sums, memory windows.

Why: every DP transition asks the same three questions: what does range ``[q, q')`` cost on a
device, may that device hold it at all, and what does a hop cost. Answering each in O(1) from
precomputed arrays is what makes the DPs vectorisable.

Device classes (PipeEdge's trick): two devices ``a, b`` are *interchangeable* when swapping
them is an automorphism of the problem: equal ``op_ms`` rows, memory, power and radio, and
``link(a, x) == link(b, x)``, ``link(x, a) == link(x, b)`` for every other ``x`` plus
``link(a, b) == link(b, a)`` (link = rtt and bandwidth). If the transpositions ``(a b)`` and
``(b c)`` are automorphisms so is ``(a c) = (a b)(b c)(a b)``, so this is an equivalence
relation and each class carries the full symmetric group: a DP may then track *how many*
devices of a class it used instead of *which*. The source, the sink and the pinned first
device break the symmetry of the one device they name, so each is a class of its own.

Memory windows: range memory ``sum(param[q:q']) + max(live[q:q'])`` only grows with the range
(bytes are non-negative), and an op a device cannot run (``inf``) poisons every range holding
it. So for each end ``q'`` the feasible starts on device ``d`` are an interval
``[L_d(q'), q'-1]`` (empty when ``L_d(q') == q'``) with ``L_d`` non-decreasing.
Memory sums use prefix sums, exact for integer byte counts below 2**53 (what the graph
analysis produces).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ml_scheduler.problem import PlanningProblem


@dataclass(frozen=True, eq=False)
class Tables:
    """Everything a class-level DP needs. ``t`` indexes classes, ``q`` positions 0..n."""

    members: tuple[tuple[int, ...], ...]  # devices of each class, increasing
    caps: np.ndarray  # (T,) class sizes
    prefix: np.ndarray  # (T, n+1) prefix sums of the representative's op_ms (inf ops as 0)
    window_start: np.ndarray  # (T, n+1) L_t(q'); column 0 unused (= 0)
    hop: np.ndarray  # (T, T, n+1) transfer of cut_bytes[q] from a member of t to another member of u
    enter: np.ndarray  # (T,) source -> class transfer of cut_bytes[0] (0 when the source is it)
    leave: np.ndarray  # (T,) class -> sink transfer of cut_bytes[n]
    first_classes: np.ndarray  # (T,) bool: may run stage 0
    max_stages: int

    @property
    def n_classes(self) -> int:
        return len(self.members)

    @property
    def n_ops(self) -> int:
        return int(self.prefix.shape[1]) - 1


def _links_equal(problem: PlanningProblem, a: int, b: int) -> bool:
    others = [x for x in range(problem.n_devices) if x not in (a, b)]
    for matrix in (problem.rtt_ms, problem.bandwidth):
        if not (np.array_equal(matrix[a, others], matrix[b, others])
                and np.array_equal(matrix[others, a], matrix[others, b])
                and matrix[a, b] == matrix[b, a]):
            return False
    return True


def _same_profile(problem: PlanningProblem, a: int, b: int) -> bool:
    if not np.array_equal(problem.op_ms[a], problem.op_ms[b]):
        return False
    if problem.mem_bytes[a] != problem.mem_bytes[b]:
        return False
    for extra in (problem.power_w, problem.radio_nj_per_byte):
        if extra is not None and extra[a] != extra[b]:
            return False
    return True


def device_classes(problem: PlanningProblem) -> tuple[tuple[int, ...], ...]:
    """Classes of interchangeable devices, ordered by their smallest member (module docstring)."""
    special = {d for d in (problem.source, problem.sink, problem.first_device) if d is not None}
    classes: list[list[int]] = []
    for device in range(problem.n_devices):
        for members in classes:
            rep = members[0]
            if (device not in special and rep not in special and _same_profile(problem, rep, device)
                    and _links_equal(problem, rep, device)):
                members.append(device)
                break
        else:
            classes.append([device])
    return tuple(tuple(c) for c in classes)


def singleton_classes(problem: PlanningProblem) -> tuple[tuple[int, ...], ...]:
    """One class per device: the plain subset DP."""
    return tuple((d,) for d in range(problem.n_devices))


def memory_starts(problem: PlanningProblem, limits: np.ndarray) -> np.ndarray:
    """(len(limits), n+1): for each end q', the first start q whose range ``[q, q')`` has memory
    <= the limit (q' when none; column 0 is 0). Same values as counting the entries of
    :func:`range_memory_matrix` over the limit (memory is non-increasing in q, also after
    rounding), found by a vectorised binary search with O(1) range maxima: O(n log n)."""
    n = problem.n_ops
    limits = np.asarray(limits, dtype=np.float64)
    params = np.concatenate([[0.0], np.cumsum(problem.param_bytes, dtype=np.float64)])
    live = np.asarray(problem.live_bytes, dtype=np.float64)
    out = np.zeros((limits.size, n + 1), dtype=np.int64)
    if n == 0 or limits.size == 0:
        return out
    levels = max(int(n).bit_length(), 1)
    table = np.empty((levels, n))  # table[j, i] = max(live[i : i + 2^j]) (clipped)
    table[0] = live
    for j in range(1, levels):
        half = 1 << (j - 1)
        table[j] = table[j - 1]
        table[j, : n - half] = np.maximum(table[j - 1, : n - half], table[j - 1, half:])
    log_table = np.zeros(n + 1, dtype=np.int64)
    log_table[1:] = np.floor(np.log2(np.arange(1, n + 1))).astype(np.int64)
    end = np.broadcast_to(np.arange(1, n + 1), (limits.size, n))
    limit = np.broadcast_to(limits[:, None], (limits.size, n))
    lo, hi = np.zeros((limits.size, n), dtype=np.int64), end.copy()  # answer in [lo, hi]
    while True:
        active = lo < hi
        if not active.any():
            break
        mid = np.where(active, (lo + hi) // 2, np.minimum(lo, end - 1))
        level = log_table[end - mid]
        live_max = np.maximum(table[level, mid], table[level, end - (1 << level)])
        fits = (params[end] - params[mid]) + live_max <= limit
        hi = np.where(active & fits, mid, hi)
        lo = np.where(active & ~fits, mid + 1, lo)
    out[:, 1:] = lo
    return out


def _window_starts(problem: PlanningProblem, device: int, mem_start: np.ndarray) -> np.ndarray:
    """L_d(q') for q' = 0..n: first start whose range fits memory and has no ``inf`` op."""
    n = problem.n_ops
    bad = ~np.isfinite(problem.op_ms[device])
    last_bad = np.maximum.accumulate(np.where(bad, np.arange(n), -1))  # last bad op index <= i
    inf_start = np.concatenate([[0], last_bad + 1])  # for end q': ops < q' bad -> start after it
    start = np.maximum(mem_start, inf_start)
    start[0] = 0
    return np.minimum(start, np.arange(n + 1)).astype(np.int64)


def range_memory_matrix(problem: PlanningProblem) -> np.ndarray:
    """``M[q, q']`` = memory of ``[q, q')`` for q < q'; ``-inf`` (always fits) elsewhere."""
    n = problem.n_ops
    params = np.concatenate([[0.0], np.cumsum(problem.param_bytes, dtype=np.float64)])
    live = np.asarray(problem.live_bytes, dtype=np.float64)
    idx = np.arange(n)
    grid = np.where(idx[None, :] >= idx[:, None], live[None, :], -np.inf)  # row q: live[i] for i >= q
    live_max = np.maximum.accumulate(grid, axis=1)  # [q, i] = max(live[q..i])
    mem = np.full((n + 1, n + 1), -np.inf)
    upper = params[None, 1:] - params[:n, None] + live_max  # [q, q'-1] -> range [q, q')
    mask = idx[None, :] >= idx[:, None]
    mem[:n, 1:] = np.where(mask, upper, -np.inf)
    return mem


def build_tables(problem: PlanningProblem, classes: tuple[tuple[int, ...], ...]) -> Tables:
    """Tables for ``classes`` (from :func:`device_classes` or :func:`singleton_classes`)."""
    n = problem.n_ops
    cut = np.asarray(problem.cut_bytes, dtype=np.float64)
    reps = [c[0] for c in classes]
    mem_starts = memory_starts(problem, problem.mem_bytes[reps])
    prefix = np.zeros((len(classes), n + 1))
    window = np.zeros((len(classes), n + 1), dtype=np.int64)
    for t, rep in enumerate(reps):
        row = np.where(np.isfinite(problem.op_ms[rep]), problem.op_ms[rep], 0.0)
        prefix[t, 1:] = np.cumsum(row)
        window[t] = _window_starts(problem, rep, mem_starts[t])
    hop = np.full((len(classes), len(classes), n + 1), np.inf)
    for t, a in enumerate(reps):
        for u, members in enumerate(classes):
            b = members[0] if u != t else (members[1] if len(members) > 1 else None)
            if b is not None:
                hop[t, u] = problem.rtt_ms[a, b] + cut / problem.bandwidth[a, b]
    enter = np.array([problem.transfer_ms(problem.source, r, float(cut[0])) for r in reps])
    leave = np.array([problem.transfer_ms(r, problem.sink, float(cut[n])) for r in reps])
    first = np.array([problem.first_device is None or problem.first_device in c for c in classes])
    return Tables(
        members=classes,
        caps=np.array([len(c) for c in classes], dtype=np.int64),
        prefix=prefix,
        window_start=window,
        hop=hop,
        enter=enter,
        leave=leave,
        first_classes=first,
        max_stages=min(problem.max_partitions, problem.n_devices),
    )
