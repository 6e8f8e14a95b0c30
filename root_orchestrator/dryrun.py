"""``POST /api/plan``: what applying an SLA would do on the clusters, without deploying anything.

For each ``ml-model`` microservice of the SLA the root does what a real deployment does up to
the point of no return: resolve the model version in the registry, rank the active clusters
(:mod:`.cluster_filter`, :mod:`.cluster_choice`: the best few are asked and the cheapest plan
is answered, with every candidate's answer), and hand them the same :class:`~treeline_common.jobs.JobRequest`
an instance would get, at ``POST <cluster>/api/plan`` instead of ``/api/service/...``. The
cluster plans it over its nodes with stored profiles only and answers the plan summary; it
publishes no artifact, sends no command and measures nothing. A cluster that cannot be
reached (or answers nonsense) is skipped for the next one, as instance creation does; an
unschedulable answer is a result, not an error (it is what a real deployment would meet).

Errors in the SLA or its models are the caller's (4xx, paths prefixed with
``applications[i].microservices[j].``); no active cluster is 422; no cluster answering is 503.
An ``ml-training`` microservice is planned as its deployment goes: the first cluster of the
coarse order (:mod:`.cluster_filter`) that answers gives its training placement (server, clients,
every rejected node with its reason code, or why it cannot be scheduled naming
``training.data``/``training.min_clients``; the row's ``training``). Other microservices
(containers) are not Treeline's to plan and are left out.
"""

from __future__ import annotations

import logging
from typing import Any

import root_orchestrator.training_hierarchy as hierarchy
from deployment_descriptors import Sla
from root_orchestrator.cluster_choice import Choice
from root_orchestrator.cluster_client import ClusterClient
from root_orchestrator.dryrun_summary import summary_of
from root_orchestrator.instances import ML_VIRTUALIZATION, InstanceManager, objective_of
from root_orchestrator.stores import Stores
from root_orchestrator.training_sla import training_spec_of
from treeline_common.errors import TreelineError, Unavailable
from treeline_common.jobs import JobRequest, ModelRef
from treeline_common.training import TRAINING_VIRTUALIZATION

log = logging.getLogger(__name__)

def _prefixed(exc: TreelineError, prefix: str) -> TreelineError:
    """The same error class with every detail path under ``prefix``."""
    details = [dict(d, path=f"{prefix}.{d.get('path', '')}".rstrip(".")) for d in exc.details]
    return type(exc)(exc.message, details or [{"path": prefix, "message": exc.message}])


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
        jobs: list[tuple[dict[str, Any], dict[str, Any], dict[str, Any], dict[str, Any]]] = []
        for a_index, app in enumerate(sla.applications):
            stored = self.stores.applications.find_applications(sla.customer_id, app.name)
            existing = {str(s.get("microservice_name")): str(s["service_id"])
                        for s in self.stores.applications.list_services(stored[0]["applicationID"])
                        } if len(stored) == 1 else {}
            for m_index, ms in enumerate(app.microservices):
                if ms.virtualization not in (ML_VIRTUALIZATION, TRAINING_VIRTUALIZATION):
                    continue
                prefix = f"applications[{a_index}].microservices[{m_index}]"
                try:
                    version = self.instances.resolve_model(ms.raw, sla.customer_id)
                    training = (training_spec_of(ms.raw)
                                if ms.virtualization == TRAINING_VIRTUALIZATION else None)
                except TreelineError as exc:
                    raise _prefixed(exc, prefix) from None
                service_id = existing.get(ms.name)
                job = JobRequest(service_id=service_id or f"plan-{app.name}-{ms.name}", instance=0,
                                 microservice=ms.raw,
                                 model=ModelRef(name=str(version["name"]), version=int(version["version"]),
                                                sha256=str(version["sha256"]),
                                                signature=version.get("signature")),
                                 root_url=self.public_url, training=training).to_dict()
                row = {"application_name": app.name, "microservice_name": ms.name, "service_id": service_id,
                       "model": {"name": version["name"], "version": version["version"],
                                 "sha256": version["sha256"]}}
                jobs.append((row, job, ms.raw, version))
        return [self._ask(row, job, ms_raw, version) for row, job, ms_raw, version in jobs]

    def _ask(self, row: dict[str, Any], job: dict[str, Any], microservice: dict[str, Any],
             version: dict[str, Any]) -> dict[str, Any]:
        """The plan of the cluster a deployment would go to (:mod:`.cluster_choice`), with every
        candidate's answer (``candidates``) and why the other clusters were filtered (``rejected``)."""
        candidates, rejected = self.instances.candidates(microservice, version)
        if (job.get("training") or {}).get("hierarchical"):
            return self._ask_hierarchy(row, job, candidates, rejected)
        if job.get("training"):  # as create_instance: the coarse order decides, no cost comparison
            choice = Choice(tuple(candidates), rejected=rejected)
        else:
            objective = objective_of({"microservice": microservice})
            choice = self.instances.chooser.choose(candidates, job, objective, rejected)
        extra = {"candidates": list(choice.answers), "rejected": dict(choice.rejected)}
        for cluster in choice.order:
            summary = choice.summaries.get(str(cluster["cluster_id"]))
            if summary is not None:
                return {**row, "cluster_id": cluster["cluster_id"], "cluster_name": cluster["cluster_name"],
                        **summary, **extra}
        failures: list[dict[str, Any]] = []
        asked = {str(a.get("cluster_id")) for a in choice.answers}
        for cluster in [c for c in choice.order if str(c["cluster_id"]) not in asked]:
            try:
                summary = summary_of(self.client.plan(cluster["url"], job))
            except TreelineError as exc:
                log.warning("cluster %s could not plan %s: %s", cluster["cluster_name"],
                            row["microservice_name"], exc)
                failures.append({"path": f"clusters.{cluster['cluster_name']}",
                                 "message": f"{exc.code}: {exc}"})
                continue
            return {**row, "cluster_id": cluster["cluster_id"], "cluster_name": cluster["cluster_name"],
                    **summary, **extra}
        failures += [{"path": f"clusters.{a['cluster_name']}", "message": str(a.get("error"))}
                     for a in choice.answers if not a.get("ok")]
        raise Unavailable(f"no cluster could plan {row['application_name']}/{row['microservice_name']}",
                          failures)

    def _ask_hierarchy(self, row: dict[str, Any], job: dict[str, Any], candidates: list[dict[str, Any]],
                       rejected: dict[str, str]) -> dict[str, Any]:
        """A hierarchical training service, planned as :func:`.training_hierarchy.create_hierarchical`
        deploys it: every candidate cluster is asked for the flat job's placement; the root
        aggregator goes to the first of the coarse order, a cluster aggregator to each cluster
        that can place the job; fewer than ``min_clusters`` is unschedulable naming
        ``training.hierarchical.min_clusters``. The row's ``training`` is the first participating
        cluster's placement (from the same answers: no cluster is asked twice); ``hierarchy``
        lists the parts and every other cluster's reason."""
        spec = JobRequest.from_dict(job).training
        assert spec is not None and spec.hierarchical is not None
        answers: dict[str, dict[str, Any]] = {}
        chosen, reasons = hierarchy.participating(self.instances, candidates, job, answers)
        minimum = spec.hierarchical.min_clusters
        names = [str(c["cluster_name"]) for c in chosen]
        first = chosen[0] if chosen else (candidates[0] if candidates else {})
        first_answer = answers.get(str(first.get("cluster_name")))
        answer = summary_of(first_answer) if first_answer is not None else {}
        schedulable = len(chosen) >= minimum
        message = "" if schedulable else \
            f"{hierarchy.MIN_CLUSTERS_PATH}: {hierarchy.too_few_clusters(len(chosen), spec)}"
        parts = {"root_cluster": str(candidates[0]["cluster_name"]) if candidates else "",
                 "clusters": names, "min_clusters": minimum,
                 "cluster_rounds": spec.hierarchical.cluster_rounds,
                 "rejected": {**rejected, **reasons}}
        training = dict(answer.get("training") or {}, rounds=spec.rounds, min_clients=spec.min_clients,
                        data=spec.data)
        return {**row, "cluster_id": first.get("cluster_id"), "cluster_name": first.get("cluster_name"),
                "schedulable": schedulable, "message": message or answer.get("message", ""),
                "strategy": answer.get("strategy", spec.strategy), "training": training, "hierarchy": parts,
                "candidates": [], "rejected": dict(rejected)}
