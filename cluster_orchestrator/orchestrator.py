"""The cluster orchestrator core: wires store, node registry, reconcile loop, workers, root sync.

It receives typed MQTT messages (as a :class:`~cluster_orchestrator.mqtt_bus.BusHandler`),
serves the REST layer and runs its loops, each guarded so one failure never stalls the
others (Ray Serve's controller lesson):

- **reconcile**: on every relevant event (a node flips, a stage report, a worker ends, a
  job arrives) and at least every ``reconcile_period``, the pure rule of
  :mod:`.reconcile` compares the desired deployments (store) with the observed nodes and
  the actions are carried out here: start a deployment worker (one per deployment at a
  time, :mod:`.deployer`), re-send a lost stage, delete a stage nobody wants;
- **liveness**: flips nodes offline after missed heartbeats (held while the broker is
  unreachable or most nodes go silent together, see :class:`~.nodes.NodeRegistry`);
- **root sync** (:mod:`.rootsync`): registration and the information push.

The core never sees paho or Flask; constructors do no I/O (``start`` does).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from cluster_orchestrator import keys, planning
from cluster_orchestrator.aggregate import compute_aggregate
from cluster_orchestrator.artifacts import ArtifactCache
from cluster_orchestrator.deployer import Attempt, Deployer, DeployerSettings, ModelCache
from cluster_orchestrator.deployments import (
    DeploymentBook,
    deployment_view,
    desired_of,
    job_report,
    placement_of,
    status_of,
)
from cluster_orchestrator.drift import DriftTracker
from cluster_orchestrator.liveness import heartbeat_timeout
from cluster_orchestrator.mqtt_bus import MessageBus
from cluster_orchestrator.nodes import NodeRegistry
from cluster_orchestrator.profiler import ProfileCollector
from cluster_orchestrator.reconcile import (
    Action,
    Delete,
    Observed,
    ObservedNode,
    Plan,
    Redeploy,
    Settings,
    reconcile,
)
from cluster_orchestrator.root_client import RootClient
from cluster_orchestrator.rootsync import RootSync
from cluster_orchestrator.store import ClusterStateStore, Doc
from cluster_orchestrator.tracker import StageTracker
from treeline_common import topics
from treeline_common.clock import Clock, SystemClock
from treeline_common.errors import InvalidInput, NotFound, TreelineError
from treeline_common.jobs import ACTIVE, ClusterPush, JobRequest, JobStatus, deployment_id_of
from treeline_common.messages import (
    DeleteCommand,
    NodeStatus,
    NodeTelemetry,
    ProfileResult,
    StageState,
    StageStats,
)

log = logging.getLogger(__name__)

DATA_SECRET_KEY = "data_secret"


@dataclass(frozen=True)
class ClusterConfig:
    """Settings of one cluster orchestrator (seconds unless named otherwise)."""

    name: str
    root_url: str
    public_url: str
    mqtt_host: str
    mqtt_port: int
    location: str = ""
    telemetry_interval: float = 2.0
    heartbeat_misses: int = 3
    push_interval: float = 15.0
    stage_timeout: float = 60.0
    liveness_period: float = 0.5
    profile_timeout: float = 30.0
    reconcile_period: float = 1.0
    max_attempts: int = 5
    replan_margin: float = 0.25
    drift_window: float = 30.0


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
    return planning.parse_job_body(
        {**body, "service_id": service_id, "instance": int(instance) if instance.isdigit() else 0}, details)


class ClusterOrchestrator:
    """The cluster's core; see the module docstring for its loops."""

    def __init__(self, config: ClusterConfig, store: ClusterStateStore, root: RootClient,
                 bus: MessageBus | None = None, clock: Clock | None = None,
                 artifacts: ArtifactCache | None = None) -> None:
        self.config = config
        self.artifacts = artifacts or ArtifactCache()
        self.store = store
        self.root = root
        self.clock = clock or SystemClock()
        self.nodes = NodeRegistry(store, self.clock,
                                  heartbeat_timeout(config.telemetry_interval, config.heartbeat_misses))
        self.book = DeploymentBook(store, self.clock)
        self.tracker = StageTracker(self.clock)
        self.profiles = ProfileCollector()
        self.models = ModelCache()
        self.drift = DriftTracker(config.replan_margin)
        self.rules = Settings(drift_window=config.drift_window)
        self._bus = bus
        self._bus_connected = True
        self._stop = threading.Event()
        self._kick = threading.Event()
        self._threads: list[threading.Thread] = []
        self._workers: dict[str, threading.Thread] = {}
        self._workers_lock = threading.Lock()
        self._sent_at: dict[tuple[str, str], float] = {}
        self._reconcile_lock = threading.Lock()
        self.sync = RootSync(store, root, config.name, config.location, config.public_url,
                             config.push_interval, self.push_body, self._stop)
        self.cluster_registered = self.sync.registered

    # ---------------------------------------------------------------- wiring
    def set_bus(self, bus: MessageBus) -> None:
        self._bus = bus

    @property
    def cluster_id(self) -> str | None:
        return self.sync.cluster_id

    def _deployer(self) -> Deployer:
        if self._bus is None:
            raise TreelineError("no message bus configured")
        settings = DeployerSettings(
            root_url=self.config.root_url, artifact_base_url=self.config.public_url,
            data_secret=self.data_secret(), stage_timeout=self.config.stage_timeout,
            profile_timeout=self.config.profile_timeout, max_attempts=self.config.max_attempts,
            margin=self.config.replan_margin)
        return Deployer(self.book, self._bus, self.root, self.tracker, self.nodes.list_nodes, self._changed,
                        settings, self._stop, self.clock, profiles=self.profiles, models=self.models,
                        artifacts=self.artifacts)

    def data_secret(self) -> bytes:
        """The cluster's data-plane secret, made once and kept in its store (data keys of running
        deployments are re-derived from it, also after a restart)."""
        value = self.store.get_setting(DATA_SECRET_KEY)
        if not value:
            value = keys.new_cluster_secret().hex()
            self.store.set_setting(DATA_SECRET_KEY, value)
        return bytes.fromhex(str(value))

    def start(self) -> None:
        """Start the loops; unfinished deployments resume through the reconcile rule."""
        self.nodes.grant_grace()
        self.sync.start()
        for target, name in ((self._liveness_loop, "liveness"), (self._reconcile_loop, "reconcile")):
            thread = threading.Thread(target=target, name=f"cluster-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop loops and workers (workers see the stop event within a second)."""
        self._stop.set()
        self._kick.set()
        self.sync.join(timeout)
        with self._workers_lock:
            threads = [*self._threads, *self._workers.values()]
        for thread in threads:
            thread.join(timeout)
        self.nodes.flush()

    # ---------------------------------------------------------------- REST-facing operations
    def register_node(self, body: Mapping[str, Any]) -> dict[str, Any]:
        doc, _ = self.nodes.register(body)
        self._changed(None)
        return {"node_id": doc["node_id"], "cluster_id": self.cluster_id, "mqtt_host": self.config.mqtt_host,
                "mqtt_port": self.config.mqtt_port, "telemetry_interval": self.config.telemetry_interval}

    def list_nodes(self) -> list[Doc]:
        return self.nodes.list_nodes()

    def submit_job(self, service_id: str, instance: str, body: Any) -> Doc:
        """Record the job as desired state (REQUESTED); the reconcile loop deploys it.
        A repeat of an active job with the same model is a no-op."""
        job = parse_job(service_id, instance, body)
        deployment_id = job.deployment_id

        def build(current: Doc | None) -> Doc | None:
            if current and status_of(current) in ACTIVE and \
                    (current.get("job") or {}).get("model", {}).get("sha256") == job.model.sha256:
                return None  # idempotent repeat of a job that is being (or was) deployed
            doc = dict(current or {})
            doc.update({"deployment_id": deployment_id, "service_id": service_id, "instance": job.instance,
                        "job": job.to_dict(), "status": JobStatus.REQUESTED.value,
                        "status_detail": "accepted", "reasons": {}, "attempts": 0, "retry_at": None,
                        "failed_capacity": None, "pending": None})
            doc.setdefault("placement", None)
            doc.setdefault("generation", 0)
            return doc

        doc = self.book.request(deployment_id, build)
        assert doc is not None
        self._changed(deployment_id)
        return doc

    def delete_job(self, service_id: str, instance: str) -> Doc:
        """Mark the deployment DELETED (its worker stops) and tell its nodes to drop it."""
        deployment_id = deployment_id_of(service_id, instance)
        self.book.require(deployment_id)

        def build(current: Doc | None) -> Doc | None:
            if current is None:
                return None
            return dict(current, status=JobStatus.DELETED.value, status_detail="deleted on request",
                        pending=None)

        doc = self.book.request(deployment_id, build)
        assert doc is not None
        nodes = {s["node_id"] for slot in ("placement", "pending")
                 for s in (doc.get(slot) or {}).get("stages", [])}
        for node_id in sorted(nodes):
            self._publish(topics.control_delete(node_id), DeleteCommand(deployment_id))
        self._changed(deployment_id)
        return doc

    def artifact(self, sha256: str) -> bytes:
        """A model or partition this cluster serves to its nodes; NotFound when it has none."""
        data = self.artifacts.get(sha256)
        if data is None:
            raise NotFound(f"artifact {sha256} is not held by this cluster",
                           [{"path": "sha256", "message": "unknown artifact"}])
        return data

    def get_deployment(self, service_id: str, instance: str) -> dict[str, Any]:
        return deployment_view(self.book.require(deployment_id_of(service_id, instance)))

    def status(self) -> dict[str, Any]:
        nodes = self.nodes.list_nodes()
        return {"cluster_name": self.config.name, "cluster_id": self.cluster_id,
                "registered": self.cluster_id is not None, "aggregate": compute_aggregate(nodes),
                "deployments": len(self.book.list_deployments()), "broker_connected": self._bus_connected}

    # ---------------------------------------------------------------- bus handler
    def on_bus_state(self, connected: bool) -> None:
        """The cluster's own broker connection went down or came back."""
        was = self._bus_connected
        self._bus_connected = connected
        if connected and not was:
            log.info("broker connection back: silence during the outage does not count as missed heartbeats")
            self.nodes.grant_grace()
            self._kick.set()

    def on_node_status(self, node_id: str, status: NodeStatus) -> None:
        self._after_node_change(node_id, self.nodes.on_status(node_id, status))

    def on_telemetry(self, node_id: str, telemetry: NodeTelemetry) -> None:
        change = self.nodes.on_telemetry(node_id, telemetry)
        self._after_node_change(node_id, change)

    def on_stage_state(self, node_id: str, state: StageState) -> None:
        log.debug("stage %s/%s g%s on %s: %s %s", state.deployment_id, state.stage, state.generation, node_id,
                  state.state, state.reason)
        self.tracker.report(node_id, state)
        try:
            self.book.set_stage_state(state.deployment_id, state.generation, state.stage, state.state,
                                      state.reason)
        except TreelineError:
            log.warning("could not record stage state of %s", state.deployment_id, exc_info=True)

    def on_stage_stats(self, node_id: str, stats: StageStats) -> None:
        self.drift.observe(stats)

    def on_profile_result(self, node_id: str, result: ProfileResult) -> None:
        self.profiles.report(result)

    # ---------------------------------------------------------------- liveness
    def check_liveness(self) -> list[tuple[str, bool]]:
        """One liveness sweep (the background loop calls this; tests may call it directly)."""
        flipped = self.nodes.sweep(self._bus_connected)
        for node_id, online in flipped:
            self._after_node_change(node_id, (not online, online))
        return flipped

    def _after_node_change(self, node_id: str, change: tuple[bool, bool] | None) -> None:
        if change is None or change[0] == change[1]:
            return
        online = change[1]
        log.info("node %s is now %s", node_id, "online" if online else "offline")
        if not online:
            self.tracker.node_lost(node_id)
        self._changed(None)

    # ---------------------------------------------------------------- reconcile
    def observed(self) -> Observed:
        """The observed state the reconcile rule reads (nodes, running workers, recent sends)."""
        nodes = {}
        for doc in self.nodes.list_nodes():
            telemetry = doc.get("telemetry") or {}
            nodes[doc["node_id"]] = ObservedNode(doc["node_id"], bool(doc.get("online")),
                                                 frozenset(telemetry.get("stages") or ()),
                                                 doc.get("last_seen"), str(doc.get("name") or ""),
                                                 str(doc.get("data_endpoint") or ""))
        with self._workers_lock:
            workers = frozenset(d for d, t in self._workers.items() if t.is_alive())
        return Observed(nodes, workers, dict(self._sent_at))

    def reconcile_once(self) -> list[Action]:
        """Run the rule once over the current state and carry out its actions."""
        with self._reconcile_lock:
            now = self.clock.now()
            desired = {}
            for doc in self.book.list_deployments():
                want = desired_of(doc)
                if want.status is JobStatus.RUNNING and want.placement is not None:
                    want = replace(want, drift_since=self.drift.since(want.placement, now))
                desired[want.deployment_id] = want
            actions = reconcile(desired, self.observed(), now, self.rules)
            for action in actions:
                try:
                    self._apply(action, desired, now)
                except Exception:  # one failing action must not stop the others
                    log.exception("reconcile action %s failed", action)
            return actions

    def _apply(self, action: Action, desired: Mapping[str, Any], now: float) -> None:
        if isinstance(action, Plan):
            self._start_attempt(action, desired[action.deployment_id])
        elif isinstance(action, Redeploy):
            doc = self.book.require(action.deployment_id)
            placement = placement_of(doc)
            if placement is None or placement.generation != action.generation:
                return
            microservice = planning.parse_job_microservice((doc.get("job") or {}).get("microservice"))
            commands = planning.secured_commands(placement, self.config.public_url, self.data_secret(),
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

    def _start_attempt(self, plan: Plan, want: Any) -> None:
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
        log.info("deployment %s: %s (%s)", plan.deployment_id,
                 "improving" if plan.improve else "planning", plan.cause)
        self._changed(plan.deployment_id)
        if self._stop.is_set():
            return
        deployer = self._deployer()
        attempt = Attempt(plan.cause, plan.improve, reprofile)
        epoch = int(doc["epoch"])

        def work() -> None:
            try:
                deployer.run(plan.deployment_id, epoch, attempt)
            finally:
                with self._workers_lock:
                    if self._workers.get(plan.deployment_id) is threading.current_thread():
                        del self._workers[plan.deployment_id]
                self._kick.set()

        thread = threading.Thread(target=work, name=f"deploy-{plan.deployment_id}-{epoch}", daemon=True)
        with self._workers_lock:
            self._workers[plan.deployment_id] = thread
        thread.start()

    def _reconcile_loop(self) -> None:
        while not self._stop.is_set():
            self._kick.wait(self.config.reconcile_period)
            self._kick.clear()
            if self._stop.is_set():
                return
            try:
                self.reconcile_once()
            except Exception:  # the loop must survive anything
                log.exception("reconcile error")

    def _liveness_loop(self) -> None:
        while not self._stop.wait(self.config.liveness_period):
            try:
                self.check_liveness()
            except Exception:  # the loop must survive anything
                log.exception("liveness sweep error")

    # ---------------------------------------------------------------- outputs
    def publish(self, topic: str, message: Any) -> None:
        """Send one payload dataclass to one topic (dropped with a warning when no bus is set)."""
        self._publish(topic, message)

    def _publish(self, topic: str, message: Any) -> None:
        if self._bus is None:
            log.warning("no bus: dropping %s", topic)
            return
        self._bus.publish(topic, message)

    def _changed(self, deployment_id: str | None) -> None:
        """A status or node change: reconcile and push to the root at once (both coalesced)."""
        self._kick.set()
        self.sync.changed()

    def push_body(self) -> ClusterPush:
        secret = self.data_secret()
        jobs = tuple(
            replace(job_report(doc), caller_key=planning.caller_key(secret, str(doc["deployment_id"])))
            for doc in self.book.list_deployments())
        return ClusterPush(aggregate=compute_aggregate(self.nodes.list_nodes()), jobs=jobs)

    def push_once(self) -> bool:
        """Push to the root now; False when it failed or the cluster is not registered."""
        return self.sync.push_once()
