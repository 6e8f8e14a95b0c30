"""Plugin interfaces: Filter and Score extension points over a whole snapshot at once.

Why vectorised (one call per plugin over all nodes, not one per node as in kube-scheduler):
a cluster here may hold 10,000 nodes and a cycle must stay well under 50 ms in Python, so a
plugin receives the snapshot (with its numpy ``columns()``) and answers with arrays.

Contracts every plugin MUST keep: pure (no I/O, no clock, no randomness, no state kept
between calls), deterministic, and never mutating the request or the snapshot.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np

from ml_scheduler.framework.request import PlacementRequest
from ml_scheduler.framework.status import Code
from ml_scheduler.snapshot import ClusterSnapshot

MAX_SCORE = 100.0
MIN_SCORE = 0.0


@runtime_checkable
class Plugin(Protocol):
    """Every plugin has a unique, stable ``name`` (used in profiles and explanations)."""

    name: str


@runtime_checkable
class FilterPlugin(Plugin, Protocol):
    """Decides which nodes can take part in a plan at all.

    ``rejection``: the ``Code`` its rejections carry (``UNSCHEDULABLE`` when the node may pass
    later, ``UNSCHEDULABLE_AND_UNRESOLVABLE`` when it cannot for this request).
    """

    rejection: Code

    def filter(self, request: PlacementRequest, snapshot: ClusterSnapshot) -> np.ndarray:
        """Boolean mask over ``snapshot.nodes``: True = the node passes this filter."""
        ...

    def reasons(self, request: PlacementRequest, snapshot: ClusterSnapshot,
                rejected: np.ndarray) -> Sequence[tuple[str, str]]:
        """``(reason_code, human message)`` for each node index in ``rejected`` (same order).

        Called only for nodes this filter rejected and no earlier filter did, so messages are
        built for a few nodes, not for the whole cluster.
        """
        ...


@runtime_checkable
class ScorePlugin(Plugin, Protocol):
    """Ranks the nodes that passed every filter; higher is better."""

    def score(self, request: PlacementRequest, snapshot: ClusterSnapshot,
              candidates: np.ndarray) -> np.ndarray:
        """Scores in ``[MIN_SCORE, MAX_SCORE]`` for the node indices ``candidates`` (same order).

        A score may depend on the candidate set (e.g. speed relative to the fastest
        candidate), never on nodes outside it.
        """
        ...
