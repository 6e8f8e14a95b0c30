"""``POST /api/plan``: what applying an SLA would do on the clusters, without deploying anything.

For each ``ml-model`` microservice of the SLA the root does what a real deployment does up to
the point of no return: resolve the model version in the registry, rank the active clusters
(:mod:`.ranking`), and hand the best one the same :class:`~treeline_common.jobs.JobRequest`
an instance would get, at ``POST <cluster>/api/plan`` instead of ``/api/service/...``. The
cluster plans it over its nodes with stored profiles only and answers the plan summary; it
publishes no artifact, sends no command and measures nothing. A cluster that cannot be
reached (or answers nonsense) is skipped for the next one, as instance creation does; an
unschedulable answer is a result, not an error (it is what a real deployment would meet).

Errors in the SLA or its models are the caller's (4xx, paths prefixed with
``applications[i].microservices[j].``); no active cluster is 422; no cluster answering is 503.
Other microservices (containers) are not Treeline's to plan and are left out.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from deployment_descriptors import Sla
from root_orchestrator.cluster_client import ClusterClient
from root_orchestrator.instances import ML_VIRTUALIZATION, InstanceManager
from root_orchestrator.stores import Stores
from treeline_common.errors import TreelineError, Unavailable
from treeline_common.jobs import JobRequest, ModelRef

log = logging.getLogger(__name__)

STAGE_FIELDS = ("index", "node_name", "flops", "cut_bytes", "predicted_compute_ms")


def _prefixed(exc: TreelineError, prefix: str) -> TreelineError:
    """The same error class with every detail path under ``prefix``."""
    details = [dict(d, path=f"{prefix}.{d.get('path', '')}".rstrip(".")) for d in exc.details]
    return type(exc)(exc.message, details or [{"path": prefix, "message": exc.message}])


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
    return summary


class DryRun:
    """Plans SLAs on the clusters; holds no state between calls."""

    def __init__(self, stores: Stores, instances: InstanceManager, client: ClusterClient,
                 public_url: str) -> None:
        self.stores = stores
        self.instances = instances
        self.client = client
        self.public_url = public_url.rstrip("/")

    def plan(self, sla: Sla) -> list[dict[str, Any]]:
        """One row per ML microservice, in SLA order; see the module docstring."""
        jobs: list[tuple[dict[str, Any], dict[str, Any]]] = []
        for a_index, app in enumerate(sla.applications):
            stored = self.stores.applications.find_applications(sla.customer_id, app.name)
            existing = {str(s.get("microservice_name")): str(s["service_id"])
                        for s in self.stores.applications.list_services(stored[0]["applicationID"])
                        } if len(stored) == 1 else {}
            for m_index, ms in enumerate(app.microservices):
                if ms.virtualization != ML_VIRTUALIZATION:
                    continue
                prefix = f"applications[{a_index}].microservices[{m_index}]"
                try:
                    version = self.instances.resolve_model(ms.raw, sla.customer_id)
                except TreelineError as exc:
                    raise _prefixed(exc, prefix) from None
                service_id = existing.get(ms.name)
                job = JobRequest(service_id=service_id or f"plan-{app.name}-{ms.name}", instance=0,
                                 microservice=ms.raw,
                                 model=ModelRef(name=str(version["name"]), version=int(version["version"]),
                                                sha256=str(version["sha256"]),
                                                signature=version.get("signature")),
                                 root_url=self.public_url).to_dict()
                row = {"application_name": app.name, "microservice_name": ms.name, "service_id": service_id,
                       "model": {"name": version["name"], "version": version["version"],
                                 "sha256": version["sha256"]}}
                jobs.append((row, job))
        if not jobs:
            return []
        ranked = self.instances.ranked_clusters()
        return [self._ask(row, job, ranked) for row, job in jobs]

    def _ask(self, row: dict[str, Any], job: dict[str, Any], ranked: list[dict[str, Any]]) -> dict[str, Any]:
        failures: list[dict[str, Any]] = []
        for cluster in ranked:
            try:
                summary = summary_of(self.client.plan(cluster["url"], job))
            except TreelineError as exc:
                log.warning("cluster %s could not plan %s: %s", cluster["cluster_name"],
                            row["microservice_name"], exc)
                failures.append({"path": f"clusters.{cluster['cluster_name']}",
                                 "message": f"{exc.code}: {exc}"})
                continue
            return {**row, "cluster_id": cluster["cluster_id"], "cluster_name": cluster["cluster_name"],
                    **summary}
        raise Unavailable(f"no cluster could plan {row['application_name']}/{row['microservice_name']}",
                          failures)
