"""One filter-and-score cycle over a frozen snapshot: ``run_filters_and_scores``.

Why it is separate from the exact planner: the planner is exponential in the number of
devices it considers, so the cycle first removes every node that cannot be used (filters,
each rejection with a reason) and ranks the rest (weighted 0-100 scores), and hands the top
``shortlist_size`` to the planner. Pure and deterministic: equal totals are ordered by
``node_id``; no I/O, clock or randomness.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, NamedTuple

import numpy as np

from ml_scheduler.framework.interfaces import MAX_SCORE, MIN_SCORE, FilterPlugin, ScorePlugin
from ml_scheduler.framework.registry import Registry, as_filters, as_scores
from ml_scheduler.framework.request import PlacementRequest
from ml_scheduler.framework.status import Code, PluginError, Status
from ml_scheduler.snapshot import ClusterSnapshot, NodeColumns

logger = logging.getLogger(__name__)

PIN_PLUGIN = "privacy_pin"
# Every node matching the pin was removed by some other filter: stage 0 has nowhere to run.
REASON_PIN_FILTERED = "privacy_pin_filtered"
_SCORE_TOLERANCE = 1e-6


class Rejection(NamedTuple):
    """Why a node was filtered: the plugin, its reason-code constant and a human message."""

    plugin: str
    code: str
    message: str


@dataclass(frozen=True)
class NodeScore:
    """A candidate's weighted total (0-100) and each score plugin's own 0-100 score."""

    total: float
    by_plugin: Mapping[str, float]


@dataclass(frozen=True)
class Framework:
    """The plugins one scheduler profile runs: every registered filter, and the score
    plugins the profile weights.

    Build it at start-up with :meth:`from_profile`, which fails on a weight for an unknown
    (or non-score) plugin, listing the known ones; a misspelt weight must never silently drop
    a criterion.
    """

    name: str
    filters: tuple[FilterPlugin, ...]
    scores: tuple[tuple[ScorePlugin, float], ...]

    @classmethod
    def from_profile(cls, profile: Any, registry: Registry | None = None) -> Framework:
        """``profile``: a ``deployment_descriptors.SchedulerProfile`` (``name``, ``weights``).

        ``registry`` defaults to ``ml_scheduler.plugins.PLUGINS`` (imported here, not at module
        level, because the plugins import this package's interfaces).
        """
        if registry is None:
            from ml_scheduler.plugins import PLUGINS

            registry = PLUGINS
        weights = dict(profile.weights)
        scores = as_scores(registry, sorted(weights))
        return cls(name=str(getattr(profile, "name", "")),
                   filters=as_filters(registry, registry.filter_names()),
                   scores=tuple((plugin, float(weights[plugin.name])) for plugin in scores))

    @property
    def weights(self) -> Mapping[str, float]:
        return MappingProxyType({plugin.name: weight for plugin, weight in self.scores})


class _ScoreTable(Mapping[str, NodeScore]):
    """``node_id -> NodeScore`` for the candidates, built on access from the score arrays.

    Why lazy: a 10,000-node cycle must not pay for 10,000 dicts nobody reads; the planner
    reads a handful, and ``explain`` reads them all once.
    """

    def __init__(self, ids: tuple[str, ...], totals: np.ndarray, by_plugin: Mapping[str, np.ndarray]) -> None:
        self._ids = ids
        self._totals = totals
        self._by_plugin = by_plugin
        self._position: dict[str, int] | None = None

    def __getitem__(self, node_id: str) -> NodeScore:
        if self._position is None:
            self._position = {node_id: pos for pos, node_id in enumerate(self._ids)}
        pos = self._position[node_id]
        return NodeScore(float(self._totals[pos]),
                         MappingProxyType({name: float(s[pos]) for name, s in self._by_plugin.items()}))

    def __iter__(self) -> Iterator[str]:
        return iter(self._ids)

    def __len__(self) -> int:
        return len(self._ids)


@dataclass(frozen=True, eq=False)
class PlacementShortlist:
    """The outcome of one cycle. Every snapshot node is in exactly one of ``rejected`` and
    ``scores``.

    - ``candidates``: indices into ``snapshot.nodes`` that passed every filter, best total
      first, equal totals by ``node_id``; ``candidate_ids`` the same as node ids.
    - ``scores``: ``node_id -> NodeScore`` for every candidate (iterates in rank order).
    - ``rejected``: ``node_id -> Rejection(plugin, code, message)``; the first filter (in the
      framework's order) that rejected the node.
    - ``shortlist``: the node ids the exact planner considers, in rank order: the top
      ``shortlist_size`` candidates, plus the best candidate matching the privacy pin and the
      best matching the source when they are not already in it (so it may hold one or two
      more than ``shortlist_size``). Empty when no node passed the filters.
    """

    candidates: np.ndarray
    candidate_ids: tuple[str, ...]
    scores: Mapping[str, NodeScore]
    rejected: Mapping[str, Rejection]
    shortlist: tuple[str, ...]
    profile: str = ""
    weights: Mapping[str, float] = field(default_factory=dict)
    rejection_codes: Mapping[str, Code] = field(default_factory=dict)

    @property
    def schedulable(self) -> bool:
        return bool(self.shortlist)

    def status(self, node_id: str) -> Status:
        """The node's filter outcome as a ``Status`` (``SUCCESS`` for a candidate); KeyError if
        the node was not in the snapshot."""
        if node_id in self.rejected:
            r = self.rejected[node_id]
            return Status(self.rejection_codes.get(r.plugin, Code.UNSCHEDULABLE), (f"{r.code}: {r.message}",),
                          r.plugin)
        if node_id in self.scores:
            return Status(Code.SUCCESS)
        raise KeyError(node_id)


def _run_filter(plugin: FilterPlugin, request: PlacementRequest, snapshot: ClusterSnapshot,
                n: int) -> np.ndarray:
    try:
        mask = np.asarray(plugin.filter(request, snapshot))
    except Exception as exc:  # attribute the failure to the plugin, then abort the cycle
        raise PluginError(Status(Code.ERROR, (f"filter raised {exc!r}",), plugin.name)) from exc
    if mask.shape != (n,) or mask.dtype != np.bool_:
        problem = f"filter returned {mask.dtype} {mask.shape}, want bool ({n},)"
        raise PluginError(Status(Code.ERROR, (problem,), plugin.name))
    return mask


def _run_score(plugin: ScorePlugin, request: PlacementRequest, snapshot: ClusterSnapshot,
               candidates: np.ndarray) -> np.ndarray:
    try:
        scores = np.asarray(plugin.score(request, snapshot, candidates), dtype=float)
    except Exception as exc:
        raise PluginError(Status(Code.ERROR, (f"score raised {exc!r}",), plugin.name)) from exc
    bad = (scores.shape != candidates.shape or not np.isfinite(scores).all()
           or (scores < MIN_SCORE - _SCORE_TOLERANCE).any() or (scores > MAX_SCORE + _SCORE_TOLERANCE).any())
    if bad:
        problem = f"scores must be finite, in [0, 100], shape {candidates.shape}"
        raise PluginError(Status(Code.ERROR, (problem,), plugin.name))
    return np.clip(scores, MIN_SCORE, MAX_SCORE)


def _selector_mask(cols: NodeColumns, selector: Any) -> np.ndarray | None:
    return None if selector is None else cols.selector_mask(selector.node, selector.label)


def _pin_unreachable(request: PlacementRequest, cols: NodeColumns, alive: np.ndarray,
                     rejected: Mapping[str, Rejection]) -> str | None:
    """Why stage 0 cannot run anywhere although the pin matches online nodes, or None."""
    pin = _selector_mask(cols, request.privacy_pin)
    if pin is None or not alive.any() or (pin & alive).any():
        return None
    matched = [cols.node_ids[i] for i in np.flatnonzero(pin)[:3]]
    why = "; ".join(f"{n}: {rejected[n].code}" for n in matched if n in rejected)
    selector = request.privacy_pin
    assert selector is not None
    target = f"node {selector.node!r}" if selector.node is not None else f"label {selector.label!r}"
    return f"every node matching the privacy pin ({target}) was filtered ({why})"


def run_filters_and_scores(request: PlacementRequest, snapshot: ClusterSnapshot, profile: Any,
                           shortlist_size: int = 8) -> PlacementShortlist:
    """Filter every node, score the survivors, rank them and cut the planner's shortlist.

    ``profile``: a :class:`Framework`, or a ``deployment_descriptors.SchedulerProfile`` (turned
    into one here; prefer building the Framework once at start-up). Never raises for an
    impossible request: an empty shortlist with every node's reason is the answer. Raises
    ``PluginError`` only when a plugin breaks its contract, ``UnknownPlugin`` for a profile
    weighting an unknown plugin.
    """
    if shortlist_size < 1:
        raise ValueError(f"shortlist_size must be >= 1, got {shortlist_size}")
    framework = profile if isinstance(profile, Framework) else Framework.from_profile(profile)
    cols = snapshot.columns()
    n, ids = cols.size, cols.node_ids
    alive = np.ones(n, dtype=bool)
    rejected: dict[str, Rejection] = {}
    for plugin in framework.filters:
        mask = _run_filter(plugin, request, snapshot, n)
        newly = np.flatnonzero(alive & ~mask)
        if newly.size:
            reasons = plugin.reasons(request, snapshot, newly)
            if len(reasons) != newly.size:
                raise PluginError(Status(Code.ERROR, (f"{len(reasons)} reasons for {newly.size} nodes",),
                                         plugin.name))
            name = plugin.name
            rejected.update(zip((ids[i] for i in newly.tolist()),
                                (Rejection(name, code, message) for code, message in reasons), strict=True))
            alive &= mask
    codes = {plugin.name: plugin.rejection for plugin in framework.filters}
    pin_problem = _pin_unreachable(request, cols, alive, rejected)
    if pin_problem is not None:
        rejected.update((ids[i], Rejection(PIN_PLUGIN, REASON_PIN_FILTERED, pin_problem))
                        for i in np.flatnonzero(alive).tolist())
        codes.setdefault(PIN_PLUGIN, Code.UNSCHEDULABLE)
        alive[:] = False

    candidates = np.flatnonzero(alive)
    total = np.zeros(candidates.size)
    by_plugin: dict[str, np.ndarray] = {}
    weight_sum = sum(weight for _, weight in framework.scores)
    if candidates.size:
        for scorer, weight in framework.scores:
            by_plugin[scorer.name] = _run_score(scorer, request, snapshot, candidates)
            total += weight * by_plugin[scorer.name]
        total = total / weight_sum if weight_sum > 0 else np.zeros(candidates.size)
    order = np.lexsort((cols.id_rank[candidates], -total))
    candidates, total = candidates[order], total[order]
    by_plugin = {name: scores[order] for name, scores in by_plugin.items()}
    for array in (candidates, total, *by_plugin.values()):
        array.setflags(write=False)
    candidate_ids = tuple(ids[i] for i in candidates.tolist())

    chosen = _shortlist_positions(request, cols, candidates, shortlist_size)
    shortlist = tuple(candidate_ids[pos] for pos in chosen)
    logger.debug("profile %s: %d nodes, %d filtered, %d candidates, shortlist %s", framework.name, n,
                 len(rejected), candidates.size, shortlist)
    return PlacementShortlist(
        candidates=candidates, candidate_ids=candidate_ids,
        scores=_ScoreTable(candidate_ids, total, MappingProxyType(by_plugin)),
        rejected=MappingProxyType(rejected), shortlist=shortlist, profile=framework.name,
        weights=framework.weights, rejection_codes=MappingProxyType(codes),
    )


def _shortlist_positions(request: PlacementRequest, cols: NodeColumns, candidates: np.ndarray,
                         size: int) -> list[int]:
    """Rank positions of the shortlist: the top ``size`` candidates, plus the best-ranked
    candidate matching the pin and the one matching the source when they rank lower (the
    planner needs them: stage 0 is pinned, the input arrives at the source)."""
    forced: set[int] = set()
    for selector in (request.privacy_pin, request.source):
        mask = _selector_mask(cols, selector)
        if mask is not None:
            hits = np.flatnonzero(mask[candidates])
            if hits.size:
                forced.add(int(hits[0]))
    return sorted(forced | set(range(min(candidates.size, size))))
