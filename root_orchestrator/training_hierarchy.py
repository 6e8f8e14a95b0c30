"""The root's fan-out of a hierarchical training service (:mod:`treeline_common.training_hierarchy`).

One call of :meth:`~root_orchestrator.instances.InstanceManager.create_instance` on an
``ml-training`` service whose ``training`` block has ``hierarchical`` creates, in one write:

- instance N, role ``root``: the root aggregator, sent to the first cluster of the coarse order
  (it needs no data: it is a Flower server whose clients are the cluster aggregators, expecting
  one per participating cluster, ``min_clients`` = ``min_clusters``);
- instances N+1.., role ``cluster``: one per *participating* cluster, each running a cluster
  aggregator and its local clients.

Participating: the clusters (of the coarse order) whose dry run (``POST /api/plan``, which
answers a training job's placement) says the flat job is schedulable there, i.e. enough nodes
with the data pass the filters. Fewer than ``min_clusters`` is Unschedulable naming
``training.hierarchical.min_clusters`` (with each cluster's reason) before anything is written.

Decide, then commit: the participation is decided from the dry runs first, the instances are
reserved in one guarded write, then the jobs are forwarded (root first, so that the cluster
parts find its address sooner). A cluster that refuses its part marks that instance FAILED; a
refused root part is Unavailable (the cluster parts then fail on their deadline for the root
aggregator's address). The root learns the root aggregator's address from the root instance's
``training_server_started`` event (:func:`aggregator_address`), which the cluster parts poll
(again while they run: a root aggregator restarted from its checkpoint reports a new address).
Deleting the root part deletes its cluster parts too (:func:`cluster_parts`; each instance
records its ``root_instance``).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from root_orchestrator.cluster_client import ClusterClient
from root_orchestrator.instance_docs import find_instance, mirror
from root_orchestrator.training_sla import training_spec_of
from treeline_common.clock import Clock
from treeline_common.errors import Conflict, NotFound, TreelineError, Unavailable, Unschedulable
from treeline_common.jobs import JobRequest, event
from treeline_common.training import TRAINING_VIRTUALIZATION, TrainingSpec
from treeline_common.training_hierarchy import ROLE_CLUSTER, ROLE_ROOT, TrainingPart

log = logging.getLogger(__name__)

MIN_CLUSTERS_PATH = "training.hierarchical.min_clusters"
STARTED_EVENT = "training_server_started"


class InstanceWriter(Protocol):
    """What this module needs of :class:`root_orchestrator.instances.InstanceManager` (a protocol,
    so this module does not import the manager that calls it)."""

    client: ClusterClient
    clock: Clock

    def job_for(self, service: dict[str, Any], number: int,
                version: dict[str, Any]) -> dict[str, Any]: ...

    def update_service(self, service_id: str,
                       mutate: Callable[[dict[str, Any]], dict[str, Any] | None]) -> dict[str, Any]: ...

    def delete_instance(self, service_id: str, number: int) -> dict[str, Any]: ...

    def set_instance(self, service_id: str, number: int, *, cluster_id: str | None = None,
                     scheduled: bool = False, status: str | None = None,
                     status_detail: str | None = None, event: dict[str, Any] | None = None) -> None: ...


def is_hierarchical(service: Mapping[str, Any]) -> bool:
    """Whether ``service`` is an ``ml-training`` service with a ``training.hierarchical`` block."""
    if service.get("virtualization") != TRAINING_VIRTUALIZATION:
        return False
    return training_spec_of(dict(service)).hierarchical is not None


def participating(manager: InstanceWriter, candidates: Sequence[dict[str, Any]], job: dict[str, Any],
                  answers: dict[str, dict[str, Any]] | None = None,
                  ) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """The candidates whose dry run of the flat ``job`` is schedulable (in order), and why the
    others are not (cluster name -> reason). ``answers``, when given, receives each cluster's
    dry-run answer by cluster name (the dry run shows one without asking again)."""
    chosen: list[dict[str, Any]] = []
    reasons: dict[str, str] = {}
    for cluster in candidates:
        name = str(cluster.get("cluster_name"))
        try:
            answer = manager.client.plan(str(cluster["url"]), job)
        except TreelineError as exc:
            reasons[name] = f"dry run failed: {exc.code}: {exc.message}"
            continue
        if answers is not None:
            answers[name] = answer
        if answer.get("schedulable"):
            chosen.append(cluster)
        else:
            reasons[name] = str(answer.get("message") or "not schedulable")
    return chosen, reasons


def too_few_clusters(count: int, spec: TrainingSpec) -> str:
    """Why a hierarchy cannot start: ``2 cluster(s) can train data:digits; min_clusters is 3``."""
    assert spec.hierarchical is not None
    return f"{count} cluster(s) can train {spec.data}; min_clusters is {spec.hierarchical.min_clusters}"


def create_hierarchical(manager: InstanceWriter, service: dict[str, Any],
                        version: dict[str, Any], resolved: dict[str, Any],
                        candidates: Sequence[dict[str, Any]], rejected: Mapping[str, str]) -> dict[str, Any]:
    """Create the root part and one cluster part per participating cluster (module docstring).
    Returns the root instance's ``{service_id, instance, cluster_id, cluster_name, parts}``."""
    service_id = str(service["service_id"])
    spec = training_spec_of(service)
    assert spec.hierarchical is not None
    minimum = spec.hierarchical.min_clusters
    clusters, reasons = participating(manager, candidates, manager.job_for(service, 0, version))
    if len(clusters) < minimum:
        details = [{"path": MIN_CLUSTERS_PATH, "message": too_few_clusters(len(clusters), spec)}]
        details += [{"path": f"clusters.{name}", "message": reason}
                    for name, reason in sorted({**rejected, **reasons}.items())]
        raise Unschedulable(str(details[0]["message"]), details)  # the path is the first detail's
    names = tuple(str(c["cluster_name"]) for c in clusters)
    root_cluster = candidates[0]
    numbers: list[int] = []

    def reserve(doc: dict[str, Any]) -> dict[str, Any]:
        instances = list(doc.get("instances") or [])
        first = max([int(i["instance"]) + 1 for i in instances] + [int(doc.get("next_instance") or 0)])
        numbers[:] = list(range(first, first + 1 + len(clusters)))
        new = [{"instance": n, "status": "REQUESTED", "status_detail": "", "cluster_id": None,
                "placement": None, "model": resolved,
                "training_part": ROLE_ROOT if n == first else ROLE_CLUSTER, "root_instance": first}
               for n in numbers]
        return mirror({"instances": instances + new, "next_instance": numbers[-1] + 1,
                       "model": {**(doc.get("model") or {}), "resolved": resolved}}, new[0])

    service = manager.update_service(service_id, reserve)
    root_number = numbers[0]
    parts = [(root_number, root_cluster, TrainingPart(ROLE_ROOT, root_number, names))]
    parts += [(n, c, TrainingPart(ROLE_CLUSTER, root_number, names))
              for n, c in zip(numbers[1:], clusters, strict=True)]
    sent = []
    for number, cluster, part in parts:
        job = JobRequest.from_dict(manager.job_for(service, number, version))
        body = JobRequest(**{**job.__dict__, "training_part": part}).to_dict()
        try:
            manager.client.deploy(str(cluster["url"]), service_id, number, body)
        except TreelineError as exc:
            log.warning("cluster %s refused part %s/%s: %s", cluster["cluster_name"], service_id, number, exc)
            failure = f"the cluster refused the {part.role} part: {exc}"
            manager.set_instance(service_id, number, status="FAILED", status_detail=failure,
                                 event=event(manager.clock.now(), "cluster_choice", "deploy", chosen=None,
                                             message=failure))
            if part.role == ROLE_ROOT:
                raise Unavailable(f"cluster {cluster['cluster_name']} refused the root aggregator",
                                  [{"path": f"clusters.{cluster['cluster_name']}",
                                    "message": f"{exc.code}: {exc}"}]) from None
            continue
        name = cluster["cluster_name"]
        manager.set_instance(service_id, number, cluster_id=cluster["cluster_id"], scheduled=True,
                             event=event(manager.clock.now(), "cluster_choice", "deploy", chosen=name,
                                         message=f"{part.role} part sent to {name}"))
        sent.append({"instance": number, "role": part.role, "cluster_name": cluster["cluster_name"]})
    log.info("hierarchical training %s: root aggregator %s on %s, cluster parts on %s", service_id,
             root_number, root_cluster["cluster_name"], ", ".join(names))
    return {"service_id": service_id, "instance": root_number, "cluster_id": root_cluster["cluster_id"],
            "cluster_name": root_cluster["cluster_name"], "parts": sent}


def cluster_parts(instances: Sequence[Mapping[str, Any]], number: int) -> list[int]:
    """The cluster parts of root part ``number`` (deleted with it: without their root aggregator
    they could only fail); [] when ``number`` is not a root part."""
    roots = [i for i in instances if i.get("instance") == number and i.get("training_part") == ROLE_ROOT]
    if not roots:
        return []
    return [int(i["instance"]) for i in instances
            if i.get("training_part") == ROLE_CLUSTER and i.get("root_instance") == number]


def delete_cluster_parts(manager: InstanceWriter, service: Mapping[str, Any],
                         number: int) -> None:
    """After root part ``number`` of ``service`` was deleted: delete its cluster parts (each
    undeployed from its cluster; one already gone is skipped; Unavailable propagates, leaving
    that part for the operator to delete again)."""
    for part in cluster_parts(list(service.get("instances") or []), number):
        with contextlib.suppress(NotFound):
            manager.delete_instance(str(service["service_id"]), part)


def aggregator_address(service: Mapping[str, Any], number: int) -> str:
    """The root aggregator's ``host:port`` from instance ``number``'s newest
    ``training_server_started`` event; NotFound naming the instance when there is none yet;
    Conflict when the root part has finished (DELETED or FAILED)."""
    inst = find_instance(list(service.get("instances") or []), number)
    if inst is None:
        raise NotFound(f"service {service.get('service_id')} has no instance {number}",
                       [{"path": "instance", "message": "unknown instance"}])
    if inst.get("status") in ("DELETED", "FAILED"):  # its cluster parts end instead of re-dialling it
        raise Conflict(f"the root aggregator of {service.get('service_id')}/{number} has finished "
                       f"({inst.get('status')})", [{"path": "instance", "message": "finished"}])
    started = [e for e in inst.get("events") or [] if e.get("kind") == STARTED_EVENT and e.get("address")]
    if not started:
        raise NotFound(f"the root aggregator of {service.get('service_id')}/{number} has not started yet",
                       [{"path": "instance", "message": "not started yet"}])
    return str(started[-1]["address"])
