"""The edge stage of a confidence cascade: answer here, or escalate to the large model.

A stage deployed with ``escalate_to`` (:class:`~treeline_common.cascade.Escalation`) runs the
small model whole and is its deployment's entry. After it runs, :func:`escalation` applies
the rule to its outputs: at or above the threshold the stage answers (a ``reply``, as any last
stage); below it the chain forwards the stage's ORIGINAL inputs to the large model's entry
stage (:class:`~.chain.StageChain`), and the data plane awaits that answer as it awaits any
pipeline's (the edge is the request's entry, so the large model's last stage answers it
directly, on the ``reply_to`` path; see :mod:`.answers`). Both stages belong to one
deployment generation, so the escalated request is signed with the same data key.

Either way the answer's timings carry :data:`~treeline_common.cascade.ESCALATED_TIMING`
(1.0 or 0.0) and :data:`~treeline_common.cascade.CONFIDENCE_TIMING`, so callers count the
escalated share. A confidence that cannot be computed (a missing declared output, NaN) fails
the request with ``stage_failed``: an unusable small model must not pass as confident.

Threading: called on whichever thread runs the chain; it only writes the job's own timings.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np

from treeline_common.cascade import CONFIDENCE_TIMING, ESCALATED_TIMING
from treeline_common.messages import NextStage

if TYPE_CHECKING:
    from node_engine.stages import LoadedStage


def escalation(stage: LoadedStage, outputs: Mapping[str, np.ndarray],
               timings: dict[str, float]) -> NextStage | None:
    """Where to send the request instead of answering it (None: answer with ``outputs``).

    ``timings`` (the request's) gets the decision and the confidence when ``stage`` is an edge
    stage; a stage without a cascade is left alone. ValueError when the confidence cannot be
    computed (see the module docstring).
    """
    cascade = stage.cascade
    if cascade is None:
        return None
    escalate, value = cascade.rule.escalates(outputs)
    timings[CONFIDENCE_TIMING] = round(value, 6)
    timings[ESCALATED_TIMING] = 1.0 if escalate else 0.0
    return cascade.to if escalate else None
