"""What a deployment document keeps of the scheduler's explanation, however large the cluster.

The scheduler's explanation and the reasons per node name every node, which at 1,000 nodes made
each deployment document about 150 KB, re-read on every reconcile pass and root push. Beyond
:data:`EXPLAIN_NODES_KEPT` nodes the stored copy keeps the best-ranked scores, the shortlist and
the chosen nodes, the first filtered nodes, and counts for the rest (per plugin and reason code, as
Nomad's AllocMetric does); ``omitted`` says how many were left out. Pure functions.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

EXPLAIN_NODES_KEPT = 32  # nodes per section of a stored explanation (and reasons) before counting


def bounded_reasons(reasons: dict[str, str], keep: int = EXPLAIN_NODES_KEPT) -> dict[str, str]:
    """``reasons`` as they are up to ``keep`` nodes; beyond, the first ``keep`` by name and one
    ``"..."`` entry saying how many more (and their most common reason)."""
    if len(reasons) <= keep:
        return reasons
    names = sorted(reasons)
    rest = Counter(reasons[n] for n in names[keep:])
    common = rest.most_common(1)[0][0]
    return {**{n: reasons[n] for n in names[:keep]},
            "...": f"{rest.total()} more nodes (most: {common})"}


def bounded_explanation(explanation: dict[str, Any], chosen: Sequence[str],
                        keep: int = EXPLAIN_NODES_KEPT) -> dict[str, Any]:
    """The stored copy of a scheduler explanation (see the module docstring); unchanged when no
    section has more than ``keep`` nodes. ``scores`` keeps rank order (best first) and always
    the shortlist and ``chosen``; ``filtered_counts`` counts every filtered node by plugin/code."""
    scores = explanation.get("scores")
    filtered = explanation.get("filtered")
    if not isinstance(scores, dict) or not isinstance(filtered, dict) \
            or (len(scores) <= keep and len(filtered) <= keep):
        return explanation
    wanted = {*list(scores)[:keep], *(explanation.get("shortlist") or []), *chosen}
    kept_scores = {n: v for n, v in scores.items() if n in wanted}
    counts: dict[str, int] = {}
    for entry in filtered.values():
        key = f"{entry.get('plugin')}/{entry.get('code')}" if isinstance(entry, dict) else str(entry)
        counts[key] = counts.get(key, 0) + 1
    kept_filtered = {n: filtered[n] for n in list(filtered)[:keep]}
    omitted = {"scores": len(scores) - len(kept_scores), "filtered": len(filtered) - len(kept_filtered)}
    return {**explanation, "scores": kept_scores, "filtered": kept_filtered, "filtered_counts": counts,
            "omitted": omitted}
