"""Treeline's scheduler framework: Filter and Score plugins over a frozen snapshot.

Modelled on kube-scheduler's framework (see docs/design research): small named plugins, a
``Status`` with a closed set of codes, scores 0-100 combined with profile weights, and an
explanation for every node. The built-in plugins live in ``ml_scheduler.plugins``.

Entry points: :class:`PlacementRequest`, :class:`Framework` (build once per profile at
start-up), :func:`run_filters_and_scores`, :func:`explain`.
"""

from __future__ import annotations

from ml_scheduler.framework.explain import explain
from ml_scheduler.framework.interfaces import MAX_SCORE, MIN_SCORE, FilterPlugin, Plugin, ScorePlugin
from ml_scheduler.framework.registry import Registry, UnknownPlugin
from ml_scheduler.framework.request import GraphStats, PlacementRequest
from ml_scheduler.framework.runner import (
    REASON_PIN_FILTERED,
    Framework,
    NodeScore,
    PlacementShortlist,
    Rejection,
    run_filters_and_scores,
)
from ml_scheduler.framework.status import Code, PluginError, Status

__all__ = [
    "MAX_SCORE",
    "MIN_SCORE",
    "REASON_PIN_FILTERED",
    "Code",
    "FilterPlugin",
    "Framework",
    "GraphStats",
    "NodeScore",
    "PlacementRequest",
    "PlacementShortlist",
    "Plugin",
    "PluginError",
    "Registry",
    "Rejection",
    "ScorePlugin",
    "Status",
    "UnknownPlugin",
    "explain",
    "run_filters_and_scores",
]
