"""The cluster orchestrator core: wires store, node registry, deployer, bus and root client.

It receives typed MQTT messages (as a :class:`~cluster_orchestrator.mqtt_bus.BusHandler`),
serves the REST layer, and runs three background loops, each guarded so one failure never
stalls the others (Ray Serve's controller lesson):

- liveness sweep: flips nodes offline after missed heartbeats; a lost node that runs a
  stage of a RUNNING deployment turns it DEGRADED and starts a re-plan;
- pusher: sends ``{aggregate, jobs}`` to the root every push interval and at once after
  any status change (changes in quick succession are coalesced into one push);
- root registration: retried with backoff until the root answers.

The core never sees paho or Flask; constructors do no I/O (``start`` does).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cluster_orchestrator import planning
from cluster_orchestrator.aggregate import compute_aggregate
from cluster_orchestrator.deployer import Deployer, DeployerSettings, StageTracker
from cluster_orchestrator.deployments import (
    ACTIVE, DEGRADED, DELETED, IN_PROGRESS, REQUESTED, RUNNING, DeploymentBook, deployment_view, job_view,
)
from cluster_orchestrator.liveness import backoff_delay, heartbeat_timeout
from cluster_orchestrator.mqtt_bus import MessageBus
from cluster_orchestrator.nodes import NodeRegistry
from cluster_orchestrator.profiler import ProfileCollector
from cluster_orchestrator.root_client import RootClient
from cluster_orchestrator.store import ClusterStateStore, Doc
from treeline_common import topics
from treeline_common.clock import Clock, SystemClock
from treeline_common.errors import InvalidInput, TreelineError
from treeline_common.messages import (
    DeleteCommand,
    NodeStatus,
    NodeTelemetry,
    ProfileResult,
    StageState,
    StageStats,
)

log = logging.getLogger(__name__)

CLUSTER_ID_KEY = "cluster_id"


@dataclass(frozen=True)
class ClusterConfig:
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


def validate_job(service_id: str, instance: str, body: Mapping[str, Any]) -> None:
    """InvalidInput naming each bad field of a root job body (contracts.md, root -> cluster)."""
    details: list[dict[str, str]] = []
    if body.get("service_id") is not None and str(body["service_id"]) != service_id:
        details.append({"path": "service_id", "message": f"differs from the path ({service_id})"})
    if body.get("instance") is not None and str(body["instance"]) != instance:
        details.append({"path": "instance", "message": f"differs from the path ({instance})"})
    try:
        planning.parse_job_microservice(body.get("microservice"))
    except InvalidInput as exc:
        details.extend(exc.details)
    model = body.get("model")
    if not isinstance(model, Mapping):
        details.append({"path": "model", "message": "is required (object)"})
    else:
        sha = model.get("sha256")
        if not isinstance(sha, str) or len(sha) != 64 or any(c not in "0123456789abcdefABCDEF" for c in sha):
            details.append({"path": "model.sha256", "message": "must be 64 hex digits"})
        if not isinstance(model.get("artifact_url"), str) or "://" not in model["artifact_url"]:
            details.append({"path": "model.artifact_url", "message": "must be an http(s) URL"})
        if model.get("signature") is not None and not isinstance(model["signature"], Mapping):
            details.append({"path": "model.signature", "message": "must be an object"})
    if details:
        raise InvalidInput("invalid job", details)


class ClusterOrchestrator:
    def __init__(self, config: ClusterConfig, store: ClusterStateStore, root: RootClient,
                 bus: MessageBus | None = None, clock: Clock | None = None) -> None:
        self.config = config
        self.store = store
        self.root = root
        self.clock = clock or SystemClock()
        self.nodes = NodeRegistry(store, self.clock,
                                  heartbeat_timeout(config.telemetry_interval, config.heartbeat_misses))
        self.book = DeploymentBook(store, self.clock)
        self.tracker = StageTracker()
        self.profiles = ProfileCollector()
        self._bus = bus
        self._stop = threading.Event()
        self._push_wanted = threading.Event()
        self._threads: list[threading.Thread] = []
        self._workers: set[threading.Thread] = set()
        self._workers_lock = threading.Lock()
        self.cluster_registered = threading.Event()
        if store.get_setting(CLUSTER_ID_KEY):
            self.cluster_registered.set()

    # ---------------------------------------------------------------- wiring
    def set_bus(self, bus: MessageBus) -> None:
        self._bus = bus

    @property
    def cluster_id(self) -> str | None:
        value = self.store.get_setting(CLUSTER_ID_KEY)
        return str(value) if value else None

    def _deployer(self) -> Deployer:
        if self._bus is None:
            raise TreelineError("no message bus configured")
        return Deployer(self.book, self._bus, self.root, self.tracker, self.nodes.list, self._changed,
                        DeployerSettings(self.config.root_url, self.config.stage_timeout,
                                         self.config.profile_timeout), self._stop,
                        profiles=self.profiles)

    def start(self) -> None:
        """Start the background loops and resume unfinished deployments from the store."""
        self.nodes.grant_startup_grace()
        for target, name in ((self._register_loop, "root-register"), (self._push_loop, "root-push"),
                             (self._liveness_loop, "liveness")):
            thread = threading.Thread(target=target, name=f"cluster-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)
        for doc in self.book.list():
            if doc.get("status") in IN_PROGRESS:
                log.info("resuming deployment %s (was %s)", doc["deployment_id"], doc["status"])
                self._replan(doc["deployment_id"], f"resumed after restart (was {doc['status']})")

    def stop(self, timeout: float = 5.0) -> None:
        """Stop loops and workers (workers see the stop event within a second)."""
        self._stop.set()
        self._push_wanted.set()
        with self._workers_lock:
            threads = [*self._threads, *self._workers]
        for thread in threads:
            thread.join(timeout)

    # ---------------------------------------------------------------- REST-facing operations
    def register_node(self, body: Mapping[str, Any]) -> dict[str, Any]:
        doc, _ = self.nodes.register(body)
        self._changed(None)
        return {"node_id": doc["node_id"], "cluster_id": self.cluster_id, "mqtt_host": self.config.mqtt_host,
                "mqtt_port": self.config.mqtt_port, "telemetry_interval": self.config.telemetry_interval}

    def list_nodes(self) -> list[Doc]:
        return self.nodes.list()

    def submit_job(self, service_id: str, instance: str, body: Mapping[str, Any]) -> Doc:
        """Record the job REQUESTED and start its worker; a repeat of an active job is a no-op."""
        validate_job(service_id, instance, body)
        job = dict(body, service_id=service_id, instance=body.get("instance", instance))
        deployment_id = planning.deployment_id_of(service_id, job["instance"])
        started: list[bool] = []

        def build(current: Doc | None) -> Doc | None:
            if current and current.get("status") in ACTIVE and \
                    (current.get("job") or {}).get("model", {}).get("sha256") == job["model"]["sha256"]:
                return None  # idempotent repeat of a job that is being (or was) deployed
            started.append(True)
            doc = dict(current or {})
            doc.update({"deployment_id": deployment_id, "service_id": service_id, "instance": job["instance"],
                        "job": job, "status": REQUESTED, "status_detail": "accepted", "reasons": {}})
            doc.setdefault("placement", None)
            doc.setdefault("generation", 0)
            return doc

        doc = self.book.request(deployment_id, build)
        assert doc is not None
        if started:
            self._changed(deployment_id)
            self._start_worker(deployment_id, int(doc["epoch"]))
        return doc

    def delete_job(self, service_id: str, instance: str) -> Doc:
        """Mark the deployment DELETED (stopping its worker) and tell its nodes to drop it."""
        deployment_id = planning.deployment_id_of(service_id, instance)
        self.book.require(deployment_id)

        def build(current: Doc | None) -> Doc | None:
            if current is None:
                return None
            return dict(current, status=DELETED, status_detail="deleted on request")

        doc = self.book.request(deployment_id, build)
        assert doc is not None
        nodes = {s["node_id"] for s in (doc.get("placement") or {}).get("stages", [])}
        for node_id in sorted(nodes):
            self._publish(topics.control_delete(node_id), DeleteCommand(deployment_id))
        self._changed(deployment_id)
        return doc

    def get_deployment(self, service_id: str, instance: str) -> dict[str, Any]:
        return deployment_view(self.book.require(planning.deployment_id_of(service_id, instance)))

    def status(self) -> dict[str, Any]:
        nodes = self.nodes.list()
        return {"cluster_name": self.config.name, "cluster_id": self.cluster_id,
                "registered": self.cluster_id is not None, "aggregate": compute_aggregate(nodes),
                "deployments": len(self.book.list())}

    # ---------------------------------------------------------------- bus handler
    def on_node_status(self, node_id: str, status: NodeStatus) -> None:
        self._after_node_change(node_id, self.nodes.on_status(node_id, status))

    def on_telemetry(self, node_id: str, telemetry: NodeTelemetry) -> None:
        self._after_node_change(node_id, self.nodes.on_telemetry(node_id, telemetry))

    def on_stage_state(self, node_id: str, state: StageState) -> None:
        log.debug("stage %s/%s on %s: %s %s", state.deployment_id, state.stage, node_id, state.state, state.reason)
        self.tracker.report(node_id, state)
        try:
            self.book.set_stage_state(state.deployment_id, state.generation, state.stage, state.state, state.reason)
        except TreelineError:
            log.warning("could not record stage state of %s", state.deployment_id, exc_info=True)

    def on_stage_stats(self, node_id: str, stats: StageStats) -> None:
        log.debug("stage stats %s/%s on %s: %s requests, %.2f ms", stats.deployment_id, stats.stage, node_id,
                  stats.requests, stats.compute_ms_mean)

    def on_profile_result(self, node_id: str, result: ProfileResult) -> None:
        self.profiles.report(result)

    # ---------------------------------------------------------------- liveness and re-planning
    def check_liveness(self) -> list[tuple[str, bool]]:
        """One liveness sweep (the background loop calls this; tests may call it directly)."""
        flipped = self.nodes.sweep()
        for node_id, online in flipped:
            self._after_node_change(node_id, (not online, online))
        return flipped

    def _after_node_change(self, node_id: str, change: tuple[bool, bool] | None) -> None:
        if change is None or change[0] == change[1]:
            return
        online = change[1]
        log.info("node %s is now %s", node_id, "online" if online else "offline")
        self._changed(None)
        if not online:
            self.tracker.node_lost(node_id)
            self._degrade_deployments_on(node_id)

    def _degrade_deployments_on(self, node_id: str) -> None:
        for doc in self.book.list():
            stages = (doc.get("placement") or {}).get("stages", [])
            if doc.get("status") == RUNNING and any(s["node_id"] == node_id for s in stages):
                self._replan(doc["deployment_id"], f"node {node_id} went offline; re-planning")

    def _replan(self, deployment_id: str, reason: str) -> None:
        """Mark DEGRADED under a new epoch and run the deployment flow again (new generation)."""
        def build(current: Doc | None) -> Doc | None:
            if current is None or current.get("status") in (DELETED,):
                return None
            return dict(current, status=DEGRADED, status_detail=reason)

        doc = self.book.request(deployment_id, build)
        if doc is None or doc.get("status") != DEGRADED:
            return
        log.warning("deployment %s -> DEGRADED: %s", deployment_id, reason)
        self._changed(deployment_id)
        self._start_worker(deployment_id, int(doc["epoch"]))

    # ---------------------------------------------------------------- workers
    def _start_worker(self, deployment_id: str, epoch: int) -> None:
        if self._stop.is_set():
            return
        deployer = self._deployer()

        def work() -> None:
            try:
                deployer.run(deployment_id, epoch)
            finally:
                with self._workers_lock:
                    self._workers.discard(threading.current_thread())

        thread = threading.Thread(target=work, name=f"deploy-{deployment_id}-{epoch}", daemon=True)
        with self._workers_lock:
            self._workers.add(thread)
        thread.start()

    def _publish(self, topic: str, message: Any) -> None:
        if self._bus is None:
            log.warning("no bus: dropping %s", topic)
            return
        self._bus.publish(topic, message)

    # ---------------------------------------------------------------- root push
    def _changed(self, deployment_id: str | None) -> None:
        """A status (or node) change: push to the root at once (coalesced by the pusher)."""
        self._push_wanted.set()

    def push_body(self) -> dict[str, Any]:
        return {"aggregate": compute_aggregate(self.nodes.list()),
                "jobs": [job_view(doc) for doc in self.book.list()]}

    def push_once(self) -> bool:
        """Push ``{aggregate, jobs}`` to the root; False (logged) when it fails or we are unregistered."""
        cluster_id = self.cluster_id
        if cluster_id is None:
            return False
        try:
            self.root.push_information(cluster_id, self.push_body())
            return True
        except TreelineError as exc:
            log.warning("push to root failed (retried next tick): %s", exc)
            return False

    def _push_loop(self) -> None:
        while not self._stop.is_set():
            self._push_wanted.wait(self.config.push_interval)
            self._push_wanted.clear()
            if self._stop.is_set():
                return
            try:
                self.push_once()
            except Exception:  # noqa: BLE001 - the loop must survive anything
                log.exception("push loop error")

    def _register_loop(self) -> None:
        attempt = 0
        while not self._stop.is_set():
            try:
                cluster_id = self.root.register_cluster(self.config.name, self.config.location,
                                                        self.config.public_url)
            except TreelineError as exc:
                delay = backoff_delay(attempt)
                log.warning("root registration failed (retry in %.1fs): %s", delay, exc)
                attempt += 1
                self._stop.wait(delay)
                continue
            except Exception:  # noqa: BLE001
                log.exception("root registration error")
                self._stop.wait(backoff_delay(attempt))
                attempt += 1
                continue
            self.store.set_setting(CLUSTER_ID_KEY, cluster_id)
            self.cluster_registered.set()
            log.info("registered with root %s as cluster %s", self.config.root_url, cluster_id)
            self._push_wanted.set()
            return

    def _liveness_loop(self) -> None:
        while not self._stop.wait(self.config.liveness_period):
            try:
                self.check_liveness()
            except Exception:  # noqa: BLE001
                log.exception("liveness sweep error")
