"""DADS two-tier min-cut (partitioning.md §3): the exact edge/cloud split of a DAG for latency.

Why: a cross-check of the chain DP from the other side. The DP cuts a *fixed* topological
order; min-cut chooses any downward-closed set of ops for the edge, which on a DAG may be no
prefix of that order. So on chains the two agree, and on DAGs ``min-cut <= prefix DP``, with
equality whenever the min-cut's edge set is a prefix (every downset is a prefix of *some*
topological order, so the min-cut answer is still a valid one-way two-stage pipeline).

Model (one request, input on the edge, answer leg free): latency =
``sum(edge_ms[E]) + sum(cloud_ms[C]) + [C non-empty] * rtt + sum_{x crosses} bytes(x) / bw``
where tensor ``x`` crosses when it is produced on the edge (or is the graph input) and read by
some cloud op; it is paid once however many cloud ops read it. Network: ``s`` = edge,
``t`` = cloud; ``s -> v`` (cloud_ms[v], cut when v is in the cloud), ``v -> t`` (edge_ms[v], cut
when v is on the edge); per tensor an auxiliary node ``x``: ``producer -> x`` (bytes / bw),
``x -> consumer`` (inf), and ``consumer -> producer`` (inf) so no data flows cloud -> edge.
The rtt is not a cut term: answer = ``min(all on edge, rtt + min cut)``, exact because the
all-edge set is the only one without a crossing. Max-flow: Dinic, pure Python.
"""

from __future__ import annotations

import logging
from collections import deque

import numpy as np

from ml_scheduler.graph import ModelGraph

logger = logging.getLogger(__name__)


class _Dinic:
    """Dinic's max-flow on float capacities (residual below ``eps`` counts as saturated)."""

    def __init__(self, n_nodes: int, eps: float) -> None:
        self.adj: list[list[int]] = [[] for _ in range(n_nodes)]
        self.to: list[int] = []
        self.cap: list[float] = []
        self.eps = eps

    def add(self, u: int, v: int, cap: float) -> None:
        self.adj[u].append(len(self.to))
        self.to.append(v)
        self.cap.append(cap)
        self.adj[v].append(len(self.to))
        self.to.append(u)
        self.cap.append(0.0)

    def _bfs(self, s: int, t: int) -> list[int] | None:
        level = [-1] * len(self.adj)
        level[s] = 0
        queue = deque([s])
        while queue:
            u = queue.popleft()
            for e in self.adj[u]:
                if self.cap[e] > self.eps and level[self.to[e]] < 0:
                    level[self.to[e]] = level[u] + 1
                    queue.append(self.to[e])
        return level if level[t] >= 0 else None

    def _dfs(self, u: int, t: int, pushed: float, level: list[int], it: list[int]) -> float:
        if u == t:
            return pushed
        while it[u] < len(self.adj[u]):
            e = self.adj[u][it[u]]
            v = self.to[e]
            if self.cap[e] > self.eps and level[v] == level[u] + 1:
                got = self._dfs(v, t, min(pushed, self.cap[e]), level, it)
                if got > 0.0:
                    self.cap[e] -= got
                    self.cap[e ^ 1] += got
                    return got
            it[u] += 1
        return 0.0

    def source_side(self, s: int, t: int) -> set[int]:
        """Run max-flow; return the nodes reachable from ``s`` in the residual graph."""
        while (level := self._bfs(s, t)) is not None:
            it = [0] * len(self.adj)
            while self._dfs(s, t, float("inf"), level, it) > 0.0:
                pass  # each call pushes one blocking-flow path
        seen, queue = {s}, deque([s])
        while queue:
            u = queue.popleft()
            for e in self.adj[u]:
                if self.cap[e] > self.eps and self.to[e] not in seen:
                    seen.add(self.to[e])
                    queue.append(self.to[e])
        return seen


def _consumers(graph: ModelGraph) -> dict[str, tuple[int, list[int]]]:
    """Non-static tensor -> (producer op index or -1 for a graph input, consumer op indices)."""
    producer: dict[str, int] = dict.fromkeys(graph.input_names, -1)
    for i, op in enumerate(graph.ops):
        for out in op.outputs:
            if out:
                producer[out] = i
    readers: dict[str, tuple[int, list[int]]] = {}
    for i, op in enumerate(graph.ops):
        for name in dict.fromkeys(op.inputs):
            if name in producer and name not in graph.static_tensors:
                readers.setdefault(name, (producer[name], []))[1].append(i)
    return readers


def split_latency(graph: ModelGraph, edge_ops: set[int], edge_ms: np.ndarray, cloud_ms: np.ndarray,
                  bandwidth: float, rtt_ms: float, input_on_edge: bool = True) -> float:
    """Latency of running ``edge_ops`` on the edge and the rest in the cloud (module docstring).

    The rtt is paid once when any tensor crosses. Does not check the one-way condition.
    """
    crossing, crosses = 0.0, False
    for name, (prod, readers) in _consumers(graph).items():
        on_edge = input_on_edge if prod < 0 else prod in edge_ops
        if on_edge and any(r not in edge_ops for r in readers):
            crossing += graph.tensor_bytes.get(name, 0) / bandwidth
            crosses = True
    cloud = [i for i in range(len(graph.ops)) if i not in edge_ops]
    return (float(sum(edge_ms[i] for i in edge_ops)) + float(sum(cloud_ms[i] for i in cloud))
            + (rtt_ms if crosses else 0.0) + crossing)


def dads_min_cut(graph: ModelGraph, edge_ms: np.ndarray, cloud_ms: np.ndarray, bandwidth: float,
                 rtt_ms: float, input_on_edge: bool = True) -> tuple[float, list[int]]:
    """(optimal latency, sorted edge op indices) of the one-way edge -> cloud split."""
    n = len(graph.ops)
    readers = _consumers(graph)
    finite = float(np.sum(edge_ms) + np.sum(cloud_ms)) + sum(
        graph.tensor_bytes.get(x, 0) / bandwidth for x in readers) + rtt_ms
    big = 4.0 * finite + 1.0
    s, t = n, n + 1
    flow = _Dinic(n + 2 + len(readers), eps=1e-12 * max(finite, 1.0))
    for v in range(n):
        flow.add(s, v, float(cloud_ms[v]))
        flow.add(v, t, float(edge_ms[v]))
    for k, (name, (prod, consumers)) in enumerate(readers.items()):
        aux = n + 2 + k
        cost = graph.tensor_bytes.get(name, 0) / bandwidth
        if prod >= 0:
            flow.add(prod, aux, cost)
        elif input_on_edge:
            flow.add(s, aux, cost)
        for c in consumers:
            flow.add(aux, c, big)
            if prod >= 0:
                flow.add(c, prod, big)  # one-way: a cloud producer forces cloud consumers
            elif not input_on_edge:
                flow.add(c, t, big)  # the input lives in the cloud: its readers must be there
    edge = {v for v in flow.source_side(s, t) if v < n}
    best_set = edge
    latency = split_latency(graph, edge, edge_ms, cloud_ms, bandwidth, rtt_ms, input_on_edge)
    if input_on_edge:
        everything = set(range(n))
        all_edge = split_latency(graph, everything, edge_ms, cloud_ms, bandwidth, rtt_ms)
        if all_edge <= latency:
            latency, best_set = all_edge, everything
    logger.debug("DADS min-cut: %d of %d ops on the edge, %.3f ms", len(best_set), n, latency)
    return latency, sorted(best_set)
