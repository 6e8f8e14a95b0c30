"""Service and instance documents at the root: the pure helpers every instance writer shares.

An instance is a dict inside its service's ``instances`` list; the service mirrors the status
fields of the instance that speaks for it (:func:`mirror`, :func:`speaker`). Split from
:mod:`root_orchestrator.instances` so that :mod:`root_orchestrator.training_hierarchy` can use
them without importing the instance manager (no import cycle).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from treeline_common.training_hierarchy import ROLE_CLUSTER, ROLE_ROOT

MAX_EVENTS = 200  # newest events kept per instance


def speaker(instances: Sequence[Mapping[str, Any]], changed: dict[str, Any] | None) -> dict[str, Any] | None:
    """The instance whose status a service shows when ``changed`` changed: ``changed`` itself,
    except that a cluster part never speaks for the service while its root part is there (the
    service is done when the result is registered, not when a cluster's part ends)."""
    if changed is None or changed.get("training_part") != ROLE_CLUSTER:
        return changed
    roots = [i for i in instances if i.get("training_part") == ROLE_ROOT]
    return dict(roots[-1]) if roots else changed


def mirror(fields: dict[str, Any], inst: dict[str, Any] | None) -> dict[str, Any]:
    """Service-level status fields follow the most recently changed instance (for a hierarchical
    training service: its root part, :func:`speaker`)."""
    inst = speaker(fields.get("instances") or [], inst)
    if inst is None:
        fields.update(status="REQUESTED", status_detail="", cluster_id=None, placement=None,
                      explanation=None, caller_key="")
    else:
        fields.update(status=inst["status"], status_detail=inst.get("status_detail", ""),
                      cluster_id=inst.get("cluster_id"), placement=inst.get("placement"),
                      explanation=inst.get("explanation"), caller_key=inst.get("caller_key", ""))
    return fields


def find_instance(instances: list[dict[str, Any]], instance: int) -> dict[str, Any] | None:
    return next((i for i in instances if i.get("instance") == instance), None)


def add_event(inst: dict[str, Any], event: dict[str, Any]) -> None:
    """Append one root-side event to an instance's history (newest :data:`MAX_EVENTS` kept)."""
    inst["events"] = (list(inst.get("events") or []) + [event])[-MAX_EVENTS:]
