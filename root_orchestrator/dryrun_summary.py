"""The documented fields of a cluster's dry-run answer (``POST <cluster>/api/plan``).

One reader for the root's ``POST /api/plan`` (:mod:`.dryrun`) and its cluster choice
(:mod:`.cluster_choice`): a cluster's answer is untrusted input, so only the documented fields
are kept, with their types checked.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from treeline_common.errors import Unavailable

STAGE_FIELDS = ("index", "node_name", "flops", "cut_bytes", "predicted_compute_ms")


def summary_of(answer: Any) -> dict[str, Any]:
    """The documented fields of a cluster's plan answer; Unavailable when it is not one."""
    if not isinstance(answer, Mapping) or not isinstance(answer.get("schedulable"), bool):
        raise Unavailable("cluster answered no plan summary (no boolean 'schedulable')")
    stages = [{k: s.get(k) for k in STAGE_FIELDS}
              for s in answer.get("stages") or [] if isinstance(s, Mapping)]
    raw_reasons = answer.get("reasons")
    reasons = {str(k): str(v) for k, v in raw_reasons.items()} if isinstance(raw_reasons, Mapping) else {}
    predicted = answer.get("predicted")
    summary = {"schedulable": answer["schedulable"], "strategy": str(answer.get("strategy") or ""),
               "predicted": dict(predicted) if isinstance(predicted, Mapping) else {},
               "stages": stages,
               "reasons": reasons,
               "message": str(answer.get("message") or "")}
    profiles = answer.get("profiles")
    if isinstance(profiles, Mapping):
        summary["profiles"] = dict(profiles)
    training = answer.get("training")  # a training job's placement (cluster_orchestrator.dryrun)
    if isinstance(training, Mapping):
        summary["training"] = dict(training)
    return summary
