"""The cluster orchestrator core: wires store, node registry, reconcile loop, workers, root sync.

It receives typed MQTT messages (as a :class:`~cluster_orchestrator.mqtt_bus.BusHandler`),
serves the REST layer and runs its loops, each guarded so one failure never stalls the
others (Ray Serve's controller lesson):

- **reconcile**: on every relevant event (a node flips, a stage report, a worker ends, a
  job arrives) and at least every ``reconcile_period``, the pure rule of
  :mod:`.reconcile` compares the desired deployments (store) with the observed nodes and
  :mod:`.actions` carries out the actions: start a deployment worker (one per deployment
  at a time, :mod:`.deployer`), re-send a lost stage, delete a stage nobody wants;
- **liveness**: flips nodes offline after missed heartbeats (held while the broker is
  unreachable or most nodes go silent together, see :class:`~.nodes.NodeRegistry`);
- **root sync** (:mod:`.rootsync`): registration and the information push.

The core never sees paho or Flask; constructors do no I/O (``start`` does).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from cluster_orchestrator import keys, planning
from cluster_orchestrator.actions import ActionRunner
from cluster_orchestrator.aggregate import compute_aggregate
from cluster_orchestrator.artifacts import ArtifactCache
from cluster_orchestrator.config import ClusterConfig
from cluster_orchestrator.deployer import Deployer, DeployerSettings
from cluster_orchestrator.deployments import (
    DeploymentBook,
    deployment_view,
    desired_of,
    job_report,
    job_sha,
    placement_of,
    status_of,
)
from cluster_orchestrator.drift import DriftTracker
from cluster_orchestrator.energy_rule import EnergyWatch, energy_view
from cluster_orchestrator.jobs import parse_job
from cluster_orchestrator.liveness import heartbeat_timeout
from cluster_orchestrator.models import ModelCache
from cluster_orchestrator.mqtt_bus import MessageBus
from cluster_orchestrator.nodes import NodeRegistry
from cluster_orchestrator.profiler import ProfileCollector
from cluster_orchestrator.reconcile import Action, Observed, ObservedNode, Settings, reconcile
from cluster_orchestrator.rollout_checks import StageStatsBoard
from cluster_orchestrator.rollout_runner import RolloutRunner
from cluster_orchestrator.root_client import RootClient
from cluster_orchestrator.rootsync import RootSync
from cluster_orchestrator.store import ClusterStateStore, Doc
from cluster_orchestrator.tracker import StageTracker
from cluster_orchestrator.training_runner import TrainingRunner
from treeline_common import topics
from treeline_common.clock import Clock, SystemClock
from treeline_common.errors import NotFound, TreelineError
from treeline_common.jobs import ACTIVE, ClusterPush, JobStatus, deployment_id_of
from treeline_common.messages import (
    DeleteCommand,
    NodeStatus,
    NodeTelemetry,
    ProfileResult,
    StageState,
    StageStats,
)
from treeline_common.training import TrainReport

# ClusterConfig and parse_job are imported from here by callers (app, tests): keep them importable.
__all__ = ["DATA_SECRET_KEY", "ClusterConfig", "ClusterOrchestrator", "parse_job"]

log = logging.getLogger(__name__)

DATA_SECRET_KEY = "data_secret"


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
        self.energy = EnergyWatch(self.drift.measured_ms)  # battery/energy re-plans (.energy_rule)
        self.stage_stats = StageStatsBoard()  # newest stage figures, for canaries (.rollout_checks)
        self.rules = Settings(drift_window=config.drift_window)
        self._bus = bus
        self._bus_connected = True
        self._stop = threading.Event()
        self._kick = threading.Event()
        self._threads: list[threading.Thread] = []
        self._reconcile_lock = threading.Lock()
        self.actions = ActionRunner(self.book, self.nodes, self.drift, config.public_url, self.data_secret,
                                    self._publish, self._changed, self._deployer, self._stop, self._kick)
        self.sync = RootSync(store, root, config.name, config.location, config.public_url,
                             config.push_interval, self.push_body, self._stop,
                             aggregate=self.aggregate,
                             on_release=self.release_job)
        self.cluster_registered = self.sync.registered
        self.training = TrainingRunner(self.book, self._publish, self.nodes.list_nodes, root, self.artifacts,
                                       config.root_url, config.public_url, self._changed, self._stop,
                                       self.clock)

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
        rollouts = RolloutRunner(self.book, self._bus.publish, self.tracker, self.stage_stats, self.clock,
                                 self._stop, self._changed)
        return Deployer(self.book, self._bus, self.root, self.tracker, self.nodes.list_nodes, self._changed,
                        settings, self._stop, self.clock, profiles=self.profiles, models=self.models,
                        artifacts=self.artifacts, rollouts=rollouts, training=self.training.run)

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
        self.training.resume()  # a training job cut short by a restart starts again
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
        threads = [*self._threads, *self.actions.workers()]
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
            if current and not current.get("serving_ref") and current.get("serving_model") \
                    and current.get("serving_model") == job_sha(current):
                # what serves (placements made before serving_ref was recorded)
                doc["serving_ref"] = current["job"]["model"]
            doc.update({"deployment_id": deployment_id, "service_id": service_id, "instance": job.instance,
                        "job": job.to_dict(), "status": JobStatus.REQUESTED.value,
                        "status_detail": "accepted", "reasons": {}, "attempts": 0, "retry_at": None,
                        "failed_capacity": None, "pending": None, "rollout": None})
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

    def release_job(self, service_id: str, instance: int) -> None:
        """The root moved (or deleted) this deployment: delete it here unless already deleted."""
        try:
            doc = self.book.require(deployment_id_of(service_id, str(instance)))
        except NotFound:
            return
        if doc.get("status") != JobStatus.DELETED.value:
            self.delete_job(service_id, str(instance))

    def artifact(self, sha256: str) -> bytes:
        """A model or partition this cluster serves to its nodes; NotFound when it has none."""
        data = self.artifacts.get(sha256)
        if data is None:
            raise NotFound(f"artifact {sha256} is not held by this cluster",
                           [{"path": "sha256", "message": "unknown artifact"}])
        return data

    def get_deployment(self, service_id: str, instance: str) -> dict[str, Any]:
        doc = self.book.require(deployment_id_of(service_id, instance))
        view = deployment_view(doc)
        deployment_id, generation = str(doc.get("deployment_id")), int(doc.get("generation") or 0)
        measured = self.stage_stats.measured(deployment_id, generation)
        for row in measured:  # the drift tracker's last window (None until MIN_WINDOW_REQUESTS served)
            row["compute_ms_window"] = self.drift.measured_ms(deployment_id, generation, int(row["stage"]))
        view["measured"] = measured
        view["energy"] = energy_view(placement_of(doc), self.nodes.list_nodes(), self.drift.measured_ms)
        return view

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
        self.stage_stats.observe(stats)

    def on_profile_result(self, node_id: str, result: ProfileResult) -> None:
        self.profiles.report(result)

    def on_training_report(self, node_id: str, report: TrainReport) -> None:
        self.training.on_report(node_id, report)

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
        held = self.nodes.plans_held_until(self.clock.now()) is not None  # nodes still leaving
        return Observed(nodes, self.actions.running(), self.actions.sent_at(), plans_held=held)

    def reconcile_once(self) -> list[Action]:
        """Run the rule once over the current state and carry out its actions."""
        with self._reconcile_lock:
            now = self.clock.now()
            # observed first: a worker that ends after this read committed before the desired state
            # is read, so a deployment it just finished never looks unattended (a spurious re-plan)
            observed = self.observed()
            desired = {}
            docs = self.book.list_deployments()
            for doc in docs:
                want = desired_of(doc)
                if want.status is JobStatus.RUNNING and want.placement is not None:
                    want = replace(want, drift_since=self.drift.since(want.placement, now))
                desired[want.deployment_id] = want
            actions = reconcile(desired, observed, now, self.rules)
            actions += self.energy.plans(docs, desired, observed, self.nodes.list_nodes(), actions)
            for action in actions:
                try:
                    self.actions.apply(action, desired, now)
                except Exception:  # one failing action must not stop the others
                    log.exception("reconcile action %s failed", action)
            return actions

    def _reconcile_loop(self) -> None:
        while not self._stop.is_set():
            held = self.nodes.plans_held_until(self.clock.now())
            if held is not None:  # nodes are leaving: one pass once they have left, not one per departure
                self._stop.wait(max(0.01, held - self.clock.now() + 0.01))
                continue
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
        return ClusterPush(aggregate=self.aggregate(), jobs=jobs)

    def aggregate(self) -> dict[str, Any]:
        """What this cluster tells the root about its nodes (:func:`compute_aggregate`)."""
        return compute_aggregate(self.nodes.list_nodes())

    def push_once(self) -> bool:
        """Push to the root now; False when it failed or the cluster is not registered."""
        return self.sync.push_once()
