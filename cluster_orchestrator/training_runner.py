"""A training deployment's worker: place it, run its :class:`TrainingJob`, hand the result to the root.

The reconcile loop treats an ``ml-training`` job (a :class:`~treeline_common.jobs.JobRequest`
with ``training``) like any deployment: a REQUESTED one gets a worker thread
(:class:`~cluster_orchestrator.actions.ActionRunner`), and :class:`~.deployer.Deployer` hands it
to :meth:`TrainingRunner.run`, which blocks that worker thread (never the reconcile loop) until
the job ends. Statuses (the existing :class:`~treeline_common.jobs.JobStatus` words):

- DEPLOYING: placed (:func:`~.training.place_training`), the Flower server is starting;
- RUNNING: the server listens and the clients train; ``status_detail`` names the last round;
- DELETED (terminal) on success: the trained version is registered at the root and nothing runs
  any more (``status_detail`` names the version; the reconcile rule never re-plans it);
- FAILED (terminal unless capacity returns): too few eligible clients (``failed_capacity`` =
  the online nodes, so it is retried when another node comes online, like a model deployment),
  or the job failed (a client short, the server failed, the result could not be registered):
  not retried by itself.

Every :class:`TrainingJob` event becomes a deployment event (``kind`` = its type, ``cause``
``training``) pushed to the root like the others. Reports from ``nodes/+/training`` reach the
running job through :meth:`TrainingRunner.on_report` (called on the MQTT thread). A deletion
(the epoch moves on) or the orchestrator's stop stops every Flower process of the job.
While it trains, the worker calls :meth:`TrainingJob.tick` every :data:`POLL_S` with the online
nodes: the job moves its Flower server off a node that went offline (resuming from the last
round's checkpoint) and re-sends the start of clients whose back-off has passed.

A hierarchical job's part (``JobRequest.training_part``, :mod:`.training_hierarchy`): role
``root`` runs the root aggregator (a server-only placement, ``min_clients`` = ``min_clusters``,
the result registered with ``hierarchical`` in its lineage); role ``cluster`` first asks the root
for the root aggregator's address, then runs a :class:`~.training_hierarchy.ClusterPartJob` and
ends DELETED ("cluster part done, aggregated into <service>/<root instance>") registering nothing.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

from cluster_orchestrator import planning
from cluster_orchestrator.artifacts import ArtifactCache
from cluster_orchestrator.deployments import DeploymentBook, Superseded
from cluster_orchestrator.root_client import RootClient
from cluster_orchestrator.training import place_aggregator, place_training, requirements_of, server_host
from cluster_orchestrator.training_hierarchy import (
    ClusterPartJob,
    lineage_of,
    root_spec,
    wait_for_root_aggregator,
)
from cluster_orchestrator.training_job import TrainingJob, TrainingResult
from treeline_common import topics
from treeline_common.clock import Clock
from treeline_common.errors import TreelineError, Unavailable
from treeline_common.jobs import JobRequest, JobStatus, event
from treeline_common.training import TrainCommand, TrainReport
from treeline_common.training_hierarchy import ROLE_CLUSTER, ROLE_ROOT, TrainingPart

log = logging.getLogger(__name__)

POLL_S = 0.5  # how often the worker checks for a deletion or a stop while training runs
DEFAULT_TIMEOUT_S = 3600.0
REGISTER_RETRY_S = (1.0, 2.0, 4.0, 8.0)  # waits between posts of a result while the root is unreachable


class TrainingRunner:
    """Runs training deployments; one instance per orchestrator (it routes reports to live jobs)."""

    def __init__(self, book: DeploymentBook, publish: Callable[[str, Any], None],
                 nodes: Callable[[], list[dict[str, Any]]], root: RootClient, artifacts: ArtifactCache,
                 root_url: str, artifact_base_url: str, on_change: Callable[[str], None],
                 stop: threading.Event, clock: Clock, timeout_s: float = DEFAULT_TIMEOUT_S,
                 register_retry_s: tuple[float, ...] = REGISTER_RETRY_S) -> None:
        self._book = book
        self._publish = publish
        self._nodes = nodes
        self._root = root
        self._artifacts = artifacts
        self._root_url = root_url
        self._node_base = artifact_base_url or root_url
        self._on_change = on_change
        self._stop = stop
        self._clock = clock
        self._timeout_s = timeout_s
        self._retry_s = register_retry_s
        self._jobs: dict[str, TrainingJob | ClusterPartJob] = {}
        self._lock = threading.Lock()

    def on_report(self, node_id: str, report: TrainReport) -> None:
        """A ``nodes/<id>/training`` report: to its job, if it runs here (others are ignored)."""
        with self._lock:
            job = self._jobs.get(report.job_id)
        if job is not None:
            job.on_report(node_id, report)

    def resume(self) -> list[str]:
        """At start: a training deployment left RUNNING by a previous process has no worker (the
        reconcile rule re-plans only in-progress ones), so it is requested again and the Flower
        processes of its old job are told to stop; the deployment ids resumed."""
        return [str(doc["deployment_id"]) for doc in self._book.list_deployments()
                if (doc.get("job") or {}).get("training") and doc.get("status") == JobStatus.RUNNING.value
                and self._resume_one(doc)]

    def _resume_one(self, doc: Mapping[str, Any]) -> bool:
        deployment_id = str(doc["deployment_id"])
        old_job = str(doc.get("training_job") or "")
        for node_id in (doc.get("training_nodes") or ()) if old_job else ():
            self._publish(topics.control_train(str(node_id)), TrainCommand(old_job, "stop"))
        changed = False

        def again(current: dict[str, Any] | None) -> dict[str, Any] | None:
            nonlocal changed
            changed = current is not None and current.get("status") == JobStatus.RUNNING.value
            if current is None or not changed:
                return None
            return dict(current, status=JobStatus.REQUESTED.value, retry_at=None,
                        status_detail="resumed after a restart: training starts again")

        self._book.request(deployment_id, again)
        if changed:
            self._book.add_event(deployment_id, event(
                self._clock.now(), "training_restarted", "restart",
                message=f"job {old_job or '(unknown)'} stopped; training starts again"))
        return changed

    def run(self, deployment_id: str, epoch: int) -> None:
        """One training attempt, in the deployment's worker thread; every outcome is committed.
        Raises Superseded when the deployment was deleted or re-requested meanwhile."""
        doc = self._book.require(deployment_id)
        request = JobRequest.from_dict(doc["job"])
        spec = request.training
        if spec is None:
            raise ValueError(f"deployment {deployment_id} is not a training job")
        nodes = self._nodes()
        needs = requirements_of(request.microservice)
        part = request.training_part  # a hierarchical job's part (.training_hierarchy); None: flat
        if part is not None and part.role == ROLE_ROOT:
            spec = root_spec(spec)
            placement = place_aggregator(planning.build_snapshot(nodes), needs)
        else:
            placement = place_training(planning.build_snapshot(nodes), spec, needs)
        if placement.unschedulable:
            online = sorted(n["node_id"] for n in nodes if n.get("online"))
            self._commit(deployment_id, epoch, status=JobStatus.FAILED,
                         status_detail=f"not scheduled: {placement.unschedulable}",
                         explanation=placement.explanation(), failed_capacity=online, retry_at=None)
            return
        model = request.model
        self._artifacts.fetch(model.sha256, lambda: self._root.download(
            planning.artifact_url(self._root_url, model.sha256), model.sha256))
        server = next(n for n in nodes if n["node_id"] == placement.server)
        used = {placement.server, *placement.clients}
        hosts = {str(n["node_id"]): server_host(n) for n in nodes if n["node_id"] in used}
        job_id = f"{deployment_id}.{epoch}"  # a new attempt never meets an old one's reports

        def on_event(_job: str, item: Mapping[str, Any]) -> None:
            self._on_event(deployment_id, epoch, dict(item))

        job: TrainingJob | ClusterPartJob
        if part is not None and part.role == ROLE_CLUSTER:
            upstream = self._root_aggregator(deployment_id, epoch, request, part)
            if not upstream:
                return
            job = ClusterPartJob(job_id, spec, placement, part, upstream=upstream, hosts=hosts,
                                 publish=self._publish, on_event=on_event, service=request.service_id,
                                 root_address=partial(self._root.training_aggregator, request.service_id,
                                                      part.root_instance),
                                 clock=self._clock)
        else:
            job = TrainingJob(job_id, spec, placement, server_host=server_host(server),
                              model_url=planning.artifact_url(self._node_base, model.sha256),
                              model_sha256=model.sha256, parent_version=model.version, publish=self._publish,
                              on_event=on_event, hosts=hosts, clock=self._clock,
                              expected_clients=len(part.clusters) if part is not None else 0)
        starting = with_node_names(f"starting the Flower server on {placement.server}", nodes)
        self._commit(deployment_id, epoch, status=JobStatus.DEPLOYING, status_detail=starting,
                     explanation=placement.explanation(), failed_capacity=None, retry_at=None,
                     training_job=job_id, training_nodes=sorted({placement.server, *placement.clients}))
        with self._lock:
            self._jobs[job_id] = job
        try:
            job.start()
            self._follow(deployment_id, epoch, job)
        finally:
            with self._lock:
                self._jobs.pop(job_id, None)
        if job.result is not None or (isinstance(job, ClusterPartJob) and job.done):
            job.stop("done")  # whatever Flower process is left on a node ends (the job stays done)
        if isinstance(job, ClusterPartJob) and job.done:
            self._commit(deployment_id, epoch, status=JobStatus.DELETED, failed_capacity=None,
                         status_detail=f"cluster part done, aggregated into {request.service_id}/"
                                       f"{job.part.root_instance}")
            return
        if job.result is None:
            self._commit(deployment_id, epoch, status=JobStatus.FAILED,
                         status_detail=f"training failed: {job.failure}", failed_capacity=None)
            return
        self._register(deployment_id, epoch, request, job.result)

    def _root_aggregator(self, deployment_id: str, epoch: int, request: JobRequest,
                         part: TrainingPart) -> str:
        """A cluster part's upstream: the root aggregator's address, asked of the root until it has
        started; '' (the deployment committed FAILED) when it does not in time."""
        try:
            return wait_for_root_aggregator(
                lambda: self._root.training_aggregator(request.service_id, part.root_instance),
                self._stop, self._clock)
        except InterruptedError:
            raise Superseded(deployment_id) from None
        except (TimeoutError, TreelineError) as exc:
            self._commit(deployment_id, epoch, status=JobStatus.FAILED, failed_capacity=None,
                         status_detail=f"training failed: {exc}")
            return ""

    def _follow(self, deployment_id: str, epoch: int, job: TrainingJob | ClusterPartJob) -> None:
        """Wait for the job's end; stop it when the deployment goes, the cluster stops or time runs out."""
        deadline = self._clock.monotonic() + self._timeout_s
        while not job.wait(POLL_S):
            if self._stop.is_set():
                job.stop("the cluster orchestrator stopped")
                raise Superseded(deployment_id)
            current = self._book.get(deployment_id)
            if current is None or int(current.get("epoch", 0)) != epoch or \
                    current.get("status") == JobStatus.DELETED.value:
                job.stop("the deployment was deleted")
                raise Superseded(deployment_id)
            if self._clock.monotonic() > deadline:
                job.stop(f"no result within {self._timeout_s:.0f} s")
            try:
                job.tick(online_nodes(self._nodes()))
            except Exception:  # one bad look at the nodes must not end the worker: next poll
                log.exception("training %s: reconcile failed", deployment_id)

    def _post(self, request: JobRequest, result: TrainingResult) -> Any:
        """The result to the root, retried while it is unreachable (the route takes repeats)."""
        waits = list(self._retry_s)
        while True:
            try:
                return self._root.post_training_result(request.service_id, request.instance,
                                                       spec_name(request), result.onnx,
                                                       lineage_of(result.lineage(), request),
                                                       result.bytes_per_client_round)
            except Unavailable as exc:
                if not waits:
                    raise
                log.warning("training result of %s/%s: root unavailable (%s); retrying in %.0f s",
                            request.service_id, request.instance, exc.message, waits[0])
                if self._stop.wait(waits.pop(0)):
                    raise

    def _register(self, deployment_id: str, epoch: int, request: JobRequest, result: TrainingResult) -> None:
        try:
            version = self._post(request, result)
        except TreelineError as exc:
            self._book.add_event(deployment_id, event(self._clock.now(), "training_register_failed",
                                                      "training", message=exc.message))
            self._commit(deployment_id, epoch, status=JobStatus.FAILED, failed_capacity=None,
                         status_detail=f"trained, but the root did not register the result: {exc.message}")
            return
        label = f"{version.get('name')}:{version.get('version')}"
        self._book.add_event(deployment_id, event(self._clock.now(), "training_registered", "training",
                                                  message=f"registered as {label}", model=label))
        self._commit(deployment_id, epoch, status=JobStatus.DELETED,
                     status_detail=f"training done: registered {label}",
                     serving_version=label, training_result=label)

    def _on_event(self, deployment_id: str, epoch: int, item: dict[str, Any]) -> None:
        """A job event: into the deployment's events; the server's start and each round update the status."""
        kind = str(item.pop("type", "training"))
        if isinstance(item.get("message"), str):  # operators know their nodes by name, not by id
            item["message"] = with_node_names(item["message"], self._nodes())
        self._book.add_event(deployment_id, event(self._clock.now(), kind, "training", **item))
        try:
            if kind in ("training_server_started", "training_round"):
                self._commit(deployment_id, epoch, status=JobStatus.RUNNING,
                             status_detail=f"training: {item.get('message', '')}")
            else:
                self._on_change(deployment_id)
        except Superseded:
            log.info("training %s: event %s after the deployment moved on", deployment_id, kind)

    def _commit(self, deployment_id: str, epoch: int, **fields: Any) -> None:
        self._book.commit(deployment_id, epoch, **fields)
        self._on_change(deployment_id)


def online_nodes(nodes: list[dict[str, Any]]) -> set[str]:
    """The ids of the node documents marked online."""
    return {str(n["node_id"]) for n in nodes if n.get("online")}


def with_node_names(message: str, nodes: list[dict[str, Any]]) -> str:
    """``message`` with every node id of ``nodes`` it names replaced by that node's name
    (``client node-1e90... failed`` -> ``client rpi4-2 failed``); unknown ids stay as they are."""
    for doc in nodes:
        node_id, name = str(doc.get("node_id") or ""), str(doc.get("name") or "")
        if node_id and name and node_id in message:
            message = re.sub(rf"(?<![\w-]){re.escape(node_id)}(?![\w-])", name, message)
    return message


def spec_name(request: JobRequest) -> str:
    """The model a training job's result is registered under (its ``output_name``)."""
    return request.training.output_name if request.training and request.training.output_name \
        else request.model.name
