"""``explain``: a cycle's outcome as a JSON document for operators.

The cluster orchestrator stores it with the deployment and the REST API returns it, so it
must be plain JSON (str, float, list, dict) and complete: every node of the snapshot is
either under ``filtered`` (with the plugin, reason code, status code and message) or under
``scores`` (with its total and per-plugin scores, 0-100, rounded to 3 decimals).
"""

from __future__ import annotations

from typing import Any

from ml_scheduler.framework.runner import PlacementShortlist
from ml_scheduler.framework.status import Code

_DIGITS = 3


def explain(shortlist: PlacementShortlist) -> dict[str, Any]:
    """``{"profile", "weights", "filtered": {node_id: {plugin, code, status, message}},
    "scores": {node_id: {total, by_plugin}}, "shortlist": [node_id, ...]}``.

    ``scores`` keeps rank order (best first); ``filtered`` is ordered by node id.
    """
    codes = shortlist.rejection_codes
    filtered = {
        node_id: {"plugin": r.plugin, "code": r.code,
                  "status": str(codes.get(r.plugin, Code.UNSCHEDULABLE).value), "message": r.message}
        for node_id, r in sorted(shortlist.rejected.items())
    }
    scores: dict[str, Any] = {}
    for node_id in shortlist.candidate_ids:
        score = shortlist.scores[node_id]
        scores[node_id] = {"total": round(score.total, _DIGITS),
                           "by_plugin": {name: round(v, _DIGITS) for name, v in score.by_plugin.items()}}
    return {
        "profile": shortlist.profile,
        "weights": {name: float(w) for name, w in shortlist.weights.items()},
        "filtered": filtered,
        "scores": scores,
        "shortlist": list(shortlist.shortlist),
    }
