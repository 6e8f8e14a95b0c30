"""The job a client posts to the cluster (``POST /api/service/<service_id>/<instance>``), validated.

The body's own checks live in :func:`~cluster_orchestrator.planning.parse_job_body`; this adds
the ones that compare it with the path, and the SLA's declared model inputs with the model's
signature the job carries (:func:`~cluster_orchestrator.planning.check_job_inputs`: a wrong name,
shape or dtype is a 400 naming ``microservice.model.inputs[i]...`` instead of a deployment that
reaches RUNNING and fails at the first request).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cluster_orchestrator import planning
from treeline_common.errors import InvalidInput
from treeline_common.jobs import JobRequest


def parse_job(service_id: str, instance: str, body: Any) -> JobRequest:
    """The job of ``POST /api/service/<service_id>/<instance>``, validated; InvalidInput names
    each bad field (the path wins over the body for ``service_id`` and ``instance``)."""
    if not isinstance(body, Mapping):
        raise InvalidInput("invalid job", [{"path": "", "message": "must be a JSON object"}])
    details: list[dict[str, Any]] = []
    if body.get("service_id") is not None and str(body["service_id"]) != service_id:
        details.append({"path": "service_id", "message": f"differs from the path ({service_id})"})
    if body.get("instance") is not None and str(body["instance"]) != instance:
        details.append({"path": "instance", "message": f"differs from the path ({instance})"})
    if not instance.isdigit():
        details.append({"path": "instance", "message": "must be a non-negative integer"})
    fields = {**body, "service_id": service_id, "instance": int(instance) if instance.isdigit() else 0}
    if body.get("training") is not None:  # an ml-training job: no model block, nothing served
        if details:
            raise InvalidInput("invalid job", details)
        return JobRequest.from_dict(fields)
    job = planning.parse_job_body(fields, details)
    planning.check_job_inputs(job)
    return job
