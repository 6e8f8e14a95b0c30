"""Carrying out the reconcile rule's actions (:mod:`.reconcile` decides, this commits).

- :class:`~.reconcile.Plan` starts a deployment worker (:mod:`.deployer`) in its own thread,
  at most one per deployment at a time; the worker kicks the reconcile loop when it ends;
- :class:`~.reconcile.Redeploy` re-sends one lost stage to its node;
- :class:`~.reconcile.Delete` tells a node to drop a stage nobody wants (at most every 2 s
  per node and command).

The running workers and the times of recent sends are observed state the rule reads back
(:meth:`ActionRunner.running`, :meth:`ActionRunner.sent_at`). Threading: :meth:`apply` is
called under the orchestrator's reconcile lock; the worker table has its own lock because
workers remove themselves from it.
"""

from __future__ import annotations

import contextvars
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from cluster_orchestrator import planning
from cluster_orchestrator.deployer import Attempt, Deployer
from cluster_orchestrator.deployments import DeploymentBook, placement_of, status_of
from cluster_orchestrator.drift import DriftTracker
from cluster_orchestrator.nodes import NodeRegistry
from cluster_orchestrator.reconcile import Action, Delete, DesiredDeployment, Plan, Redeploy
from cluster_orchestrator.store import Doc
from treeline_common import topics
from treeline_common.jobs import JobStatus
from treeline_common.logs import log_context

log = logging.getLogger(__name__)


class ActionRunner:
    """Applies reconcile actions; owns the deployment workers and the record of recent sends.

    Every collaborator that may change after construction (the bus behind ``publish`` and
    ``deployer``, the data secret) is reached through a callable, so nothing here is stale.
    """

    def __init__(self, book: DeploymentBook, nodes: NodeRegistry, drift: DriftTracker, public_url: str,
                 data_secret: Callable[[], bytes], publish: Callable[[str, Any], None],
                 changed: Callable[[str | None], None], deployer: Callable[[], Deployer],
                 stop: threading.Event, kick: threading.Event) -> None:
        self.book = book
        self.nodes = nodes
        self.drift = drift
        self.public_url = public_url
        self._data_secret = data_secret
        self._publish = publish
        self._changed = changed
        self._deployer = deployer
        self._stop = stop
        self._kick = kick
        self._workers: dict[str, threading.Thread] = {}
        self._workers_lock = threading.Lock()
        self._sent_at: dict[tuple[str, str], float] = {}
        # hears every finished attempt: (cause, improve, seconds it ran); cluster_orchestrator.metrics sets it
        self.on_attempt: Callable[[str, bool, float], None] | None = None

    def running(self) -> frozenset[str]:
        """Deployment ids whose worker thread is alive now."""
        with self._workers_lock:
            return frozenset(d for d, t in self._workers.items() if t.is_alive())

    def sent_at(self) -> dict[tuple[str, str], float]:
        """A copy of ``{(node_id, stage key or "delete:<command>"): time of the last send}``."""
        return dict(self._sent_at)

    def workers(self) -> list[threading.Thread]:
        """The worker threads started and not yet finished (to join them at stop)."""
        with self._workers_lock:
            return list(self._workers.values())

    def apply(self, action: Action, desired: Mapping[str, DesiredDeployment], now: float) -> None:
        """Carry out one action; exceptions propagate (the caller isolates each action). Every line
        logged meanwhile, the worker's it starts included, carries the action's deployment id."""
        with log_context(deployment_id=action.deployment_id):
            self._apply(action, desired, now)

    def _apply(self, action: Action, desired: Mapping[str, DesiredDeployment], now: float) -> None:
        if isinstance(action, Plan):
            self._start_attempt(action, desired[action.deployment_id])
        elif isinstance(action, Redeploy):
            doc = self.book.require(action.deployment_id)
            placement = placement_of(doc)
            if placement is None or placement.generation != action.generation:
                return
            microservice = planning.parse_job_microservice((doc.get("job") or {}).get("microservice"))
            commands = planning.secured_commands(placement, self.public_url, self._data_secret(),
                                                 microservice, self.nodes.list_nodes())
            for node_id, command in commands:
                if node_id == action.node_id and command.stage == action.stage:
                    log.info("re-sending stage %s to node %s (not in its telemetry)",
                             action.stage_key, node_id)
                    self._publish(topics.control_deploy(node_id), command)
            self._sent_at[(action.node_id, action.stage_key)] = now
        elif isinstance(action, Delete):
            key = (action.node_id, f"delete:{action.command}")
            if now - self._sent_at.get(key, -1e9) < 2.0:
                return
            log.info("deleting %s g%s/%s on node %s: %s", action.command.deployment_id,
                     action.command.generation, action.command.stage, action.node_id, action.reason)
            self._publish(topics.control_delete(action.node_id), action.command)
            self._sent_at[key] = now

    def _start_attempt(self, plan: Plan, want: DesiredDeployment) -> None:
        reprofile: frozenset[str] = frozenset()
        if plan.improve and want.placement is not None and want.drift_since is not None:
            drifted = set(self.drift.drifted_stages(want.placement))
            reprofile = frozenset(s.profile for s in want.placement.stages
                                  if s.index in drifted and s.profile)
            self.drift.handled(want.placement)

        def build(current: Doc | None) -> Doc | None:
            if current is None:
                return None
            status = status_of(current)
            doc = dict(current)
            if status is JobStatus.RUNNING and not plan.improve:
                doc.update(status=JobStatus.DEGRADED.value, status_detail=f"{plan.cause}; re-planning")
            elif status is JobStatus.FAILED:
                doc.update(status=JobStatus.REQUESTED.value, status_detail=plan.cause, attempts=0,
                           failed_capacity=None)
            return doc

        doc = self.book.request(plan.deployment_id, build)
        if doc is None or status_of(doc) is JobStatus.DELETED:
            return
        log.info("%s deployment_id=%s cause=%r", "improving" if plan.improve else "planning",
                 plan.deployment_id, plan.cause)
        self._changed(plan.deployment_id)
        if self._stop.is_set():
            return
        deployer = self._deployer()
        attempt = Attempt(plan.cause, plan.improve, reprofile)
        epoch = int(doc["epoch"])

        def work() -> None:
            started = time.monotonic()
            try:
                deployer.run(plan.deployment_id, epoch, attempt)
            finally:
                if self.on_attempt is not None:
                    self.on_attempt(plan.cause, plan.improve, time.monotonic() - started)
                with self._workers_lock:
                    if self._workers.get(plan.deployment_id) is threading.current_thread():
                        del self._workers[plan.deployment_id]
                self._kick.set()

        thread = threading.Thread(target=contextvars.copy_context().run, args=(work,),  # the log context
                                  name=f"deploy-{plan.deployment_id}-{epoch}", daemon=True)
        with self._workers_lock:
            self._workers[plan.deployment_id] = thread
        thread.start()
