"""The node engine daemon: wires data plane, registration, MQTT, commands and telemetry.

Start-up order matters: the data plane is bound first (its endpoint goes into the
registration body), then the node registers with the cluster (retrying until it answers),
then it connects to the broker the cluster named. The MQTT session carries a retained last
will ``offline`` and, on every (re)connect, a retained birth ``online`` whose ``seq`` grows
with every connection attempt. The sequence starts from the wall clock in milliseconds, so
it also grows across restarts of the process (a restarted node registers again under its
name, gets its node id back and is born with a larger seq) and the cluster can always tell
a stale status from a newer one. Telemetry carries the seq of the session it goes out on.

Rebirth: the node listens on its own status topic. A status it did not publish that would
make it look dead or outrank its birth (see :func:`status_reaction`) is answered, at most
once per :data:`REBIRTH_INTERVAL`, by :class:`Liveness`: republishing the birth, or, when
the received seq is not below its own, a new session with a seq above it (new will, new
retained birth).

Shutdown (SIGTERM/SIGINT) publishes ``offline``, disconnects without the will, unloads
the stages and closes the sockets; it takes well under two seconds. All state lives in a
:class:`NodeEngine` instance; the clock and the stop event are injected.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import signal
import sys
import tempfile
import threading
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

from node_engine.commands import CommandHandler
from node_engine.config import NodeConfig, parse_args
from node_engine.data_plane.server import DataPlaneServer
from node_engine.emulation import Emulator
from node_engine.identity import curve_secret_key
from node_engine.links import LinkMonitor
from node_engine.metrics import NodeMetrics, make_runner
from node_engine.mqtt_link import MqttLink
from node_engine.profiling import ProfileWorker
from node_engine.refusals import MIB
from node_engine.registration import register
from node_engine.runtime import load_partition
from node_engine.sources.battery_emulated import BatteryEmulation, EmulatedBattery
from node_engine.stages import Session, StageTable
from node_engine.telemetry import TelemetryReader, memory_limit_mb, read_telemetry, registration_body
from node_engine.training.handler import TrainingHandler, attach
from node_engine.v2_http import V2Server, start_v2
from treeline_common import topics
from treeline_common.capabilities import HELD_OUT_FILE
from treeline_common.clock import Clock, SystemClock
from treeline_common.errors import TreelineError
from treeline_common.messages import (
    NodeStatus,
    PayloadError,
    ProfileResult,
    StageState,
    StageStats,
    decode,
    encode,
)
from treeline_common.shutdown import ShutdownSignal

log = logging.getLogger(__name__)

DEFAULT_TELEMETRY_INTERVAL = 2.0
REBIRTH_INTERVAL = 1.0  # seconds: at most one reaction to foreign statuses per interval (no loops)

IGNORE, REPUBLISH, REBIRTH = "ignore", "republish", "rebirth"


def status_reaction(received: NodeStatus, node_id: str, seq: int, leaving: bool) -> str:
    """What a connected node does about ``received`` on its own status topic (pure).

    ``seq`` is the node's current birth seq (also the seq of its armed will).

    - :data:`IGNORE`: another node's id; anything while ``leaving`` (our own shutdown
      ``offline``); our own birth echoed back (``online`` with our seq); an ``online``
      with a lower seq (stale, harmless);
    - :data:`REPUBLISH`: ``offline`` with a lower seq — our previous session's will replayed
      on subscribe, or a stale spoof that replaced the retained birth. Our armed will still
      outranks it, so republishing the birth restores the retained ``online``;
    - :data:`REBIRTH`: anything else with a seq at or above ours that we did not publish.
      An ``offline`` with our own seq is never ours while we are connected (the broker
      publishes a session's will only once that session is gone, and every session gets a
      new seq), so it is as foreign as a higher one; an ``online`` above ours would make the
      cluster dismiss our real will as stale. The node needs a seq above it: a new session.
    """
    if leaving or received.node_id != node_id:
        return IGNORE
    if received.seq < seq:
        return REPUBLISH if received.state == "offline" else IGNORE
    if received.state == "online" and received.seq == seq:
        return IGNORE
    return REBIRTH


class Liveness:
    """The node's birth seq and its answers to foreign statuses. Thread-safe.

    ``republish`` publishes the current birth; ``renew`` replaces the MQTT session (its
    pre-connect hook calls :meth:`next_will`, its connect hook publishes :meth:`birth`).
    Reactions run on a worker thread (never paho's: renewing joins that thread), at most
    one per ``interval``; reactions asked for meanwhile merge into the next one, which
    is never dropped, so a spoof that lands during the pause is still answered.
    """

    def __init__(self, node_id: str, seq: int, clock: Clock, *, republish: Callable[[], object],
                 renew: Callable[[], object], interval: float = REBIRTH_INTERVAL) -> None:
        self.node_id = node_id
        self._seq = seq
        self._clock = clock
        self._republish = republish
        self._renew = renew
        self._interval = interval
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closed = threading.Event()
        self._pending = IGNORE
        self._above = 0  # highest foreign seq asking for a rebirth
        self._thread: threading.Thread | None = None

    @property
    def seq(self) -> int:
        with self._lock:
            return self._seq

    def next_will(self) -> NodeStatus:
        """The will for the next connection attempt; each attempt gets a new, larger seq."""
        with self._lock:
            self._seq += 1
            return NodeStatus(node_id=self.node_id, state="offline", seq=self._seq, ts=self._clock.now())

    def birth(self) -> NodeStatus:
        return NodeStatus(node_id=self.node_id, state="online", seq=self.seq, ts=self._clock.now())

    def leave(self) -> NodeStatus:
        """Stop reacting (we are going offline ourselves) and return the ``offline`` to publish.

        Waits (bounded) for a reaction in progress, so a session renewed in the middle of the
        shutdown cannot leave a fresh ``online`` behind the ``offline``.
        """
        self.close(timeout=1.0)
        return NodeStatus(node_id=self.node_id, state="offline", seq=self.seq, ts=self._clock.now())

    def on_status(self, payload: bytes) -> None:
        """MQTT handler of our own status topic: classify and hand over to the worker."""
        try:
            received = decode(NodeStatus, payload)
        except PayloadError as exc:
            log.warning("dropping bad status payload on our own topic: %s", exc)
            return
        with self._lock:
            reaction = status_reaction(received, self.node_id, self._seq, self._closed.is_set())
            if reaction == IGNORE:
                return
            if reaction == REBIRTH:
                self._above = max(self._above, received.seq)
                self._pending = REBIRTH
            elif self._pending == IGNORE:
                self._pending = REPUBLISH
        log.warning("status %s seq %s for us on our topic (our seq %s): %s", received.state, received.seq,
                    self.seq, reaction)
        self._wake.set()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="liveness", daemon=True)
        self._thread.start()

    def close(self, timeout: float = 0.5) -> None:
        self._closed.set()
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def _run(self) -> None:
        last = float("-inf")
        while True:
            self._wake.wait()
            if self._closed.is_set():
                return
            pause = last + self._interval - self._clock.monotonic()
            if pause > 0 and self._closed.wait(pause):
                return
            with self._lock:
                self._wake.clear()
                reaction, self._pending = self._pending, IGNORE
                if reaction == REBIRTH:
                    self._seq = max(self._seq, self._above)  # the next will adds one: above both
            last = self._clock.monotonic()
            try:
                if reaction == REBIRTH:
                    log.warning("rebirth: renewing the session above seq %s", self.seq)
                    self._renew()
                elif reaction == REPUBLISH:
                    self._republish()
            except Exception:
                log.exception("liveness %s failed", reaction)


class NodeEngine:
    """One node engine. :meth:`run` blocks until ``stop`` is set and returns an exit code."""

    def __init__(self, config: NodeConfig, *, clock: Clock | None = None,
                 stop: threading.Event | None = None) -> None:
        self.config = config
        self.clock = clock or SystemClock()
        self.stop = stop or threading.Event()
        self.stages = StageTable()
        self.node_id = ""
        self.instance_id = uuid.uuid4().hex  # this process; the cluster refuses a second live one
        self._first_seq = int(self.clock.now() * 1000)
        self._liveness: Liveness | None = None
        self._link: MqttLink | None = None
        self._links: LinkMonitor | None = None
        self._telemetry: TelemetryReader | None = None
        self._battery: BatteryEmulation | None = None  # an emulated battery and its charger file

    # ------------------------------------------------------------------ main flow

    def run(self) -> int:
        own_dir = self.config.data_dir is None
        data_dir = Path(self.config.data_dir or tempfile.mkdtemp(prefix="treeline-node-"))
        metrics = NodeMetrics(self.stages) if self.config.metrics_port is not None else None  # --metrics-port
        battery = EmulatedBattery.from_profile(self.config.profile, self.clock.monotonic)  # None: no battery
        self._battery = BatteryEmulation(battery, data_dir) if battery is not None else None
        emulator = Emulator.from_profile(self.config.profile, self.stop, battery)
        runner = make_runner(metrics, emulator, self.clock)
        # An emulated device computes one request at a time (a second worker would double its
        # emulated throughput); a real host overlaps two. Either way, requests waiting on a
        # downstream stage do not hold a worker, so the pipeline still has many in flight.
        workers = 1 if self.config.profile.emulated else 2
        links = self._links = LinkMonitor(self.stages, lambda: (server.endpoint, server.curve_endpoint),
                                          self.clock, self.stop, delay_ms=runner.link_delay_ms,
                                          interval=self.config.link_probe_interval)
        server = DataPlaneServer(self.stages, runner, host=self.config.host, port=self.config.data_port,
                                 workers=workers, clock=self.clock, name=self.config.name,
                                 curve_secret_key=curve_secret_key(data_dir), on_transfer=links.on_transfer)
        commands: CommandHandler | None = None
        profiler: ProfileWorker | None = None
        training: TrainingHandler | None = None  # Flower processes of training jobs (node_engine.training)
        v2: V2Server | None = None  # the Open Inference Protocol of the entries here (--v2-port)
        # one reader for the node's life: rates (disk, network, RAPL) need the previous sample
        self._telemetry = TelemetryReader(self.config.profile, self.clock, disk_path=str(data_dir))
        try:
            endpoint = server.start()
            try:
                v2 = start_v2(self.config.v2_port, self.stages, endpoint, host=self.config.host,
                              cluster_url=self.config.cluster_url, name=self.config.name,
                              runner=None if self.config.profile.emulated else runner)
                if metrics is not None:
                    metrics.serve(self.config.metrics_port or 0, self.config.host, server)
            except OSError as exc:
                log.error("cannot serve the v2 REST API (port %s) or /metrics (port %s): %s",
                          self.config.v2_port, self.config.metrics_port, exc)
                return 2
            body = registration_body(self.config.name, self.config.profile, endpoint, self.config.labels,
                                     self.instance_id, can_evaluate=(data_dir / HELD_OUT_FILE).is_file())
            # the encrypted data plane: where and with which key other nodes reach this one
            body.update(data_curve_endpoint=server.curve_endpoint, curve_public_key=server.curve_public_key)
            try:
                registration = register(self.config.cluster_url, body, self.stop,
                                        join_token=self.config.join_token)
            except TreelineError as exc:
                log.error("cluster %s rejected the registration: %s", self.config.cluster_url, exc)
                return 2
            if registration is None:
                return 0  # stopped before the cluster answered
            self.node_id = registration.node_id
            log.info("registered as %s in cluster %s (profile %s, data plane %s)", self.node_id,
                     registration.cluster_id, self.config.profile.name, endpoint)
            commands = CommandHandler(self.node_id, self.stages, data_dir, self._load, self._report_state,
                                      self.clock, self.stop, join_token=self.config.join_token,
                                      memory_limit_bytes=memory_limit_mb(self.config.profile) * MIB)
            tls = (self.config.mqtt_tls_files if registration.mqtt_tls or self.config.mqtt_tls else None)
            link = MqttLink(f"treeline-node-{self.node_id}", registration.mqtt_host, registration.mqtt_port,
                            will=self._next_will, on_connected=self._on_connected,
                            username=registration.mqtt_username, password=registration.mqtt_password, tls=tls)
            liveness = Liveness(self.node_id, self._first_seq, self.clock, republish=self._on_connected,
                                renew=link.renew_session)
            self._liveness = liveness
            link.subscribe(topics.status(self.node_id), liveness.on_status)
            link.subscribe(topics.control_deploy(self.node_id), commands.on_deploy)
            link.subscribe(topics.control_delete(self.node_id), commands.on_delete)
            profile = self.config.profile
            profiler = ProfileWorker(self.node_id, profile.device_class, data_dir, self._publish_profile,
                                     self.clock, self.stop, threads=self.config.threads,
                                     speed_factor=profile.speed_factor if profile.emulated else 1.0,
                                     join_token=self.config.join_token)
            link.subscribe(topics.control_profile(self.node_id), profiler.on_profile)
            training = attach(link, self.node_id, data_dir, self.clock, self.config.join_token)
            self._link = link
            commands.start()
            links.start()
            profiler.start()
            liveness.start()
            link.start()
            interval = (self.config.telemetry_interval or registration.telemetry_interval
                        or DEFAULT_TELEMETRY_INTERVAL)
            self._publish_loop(interval)
            self._go_offline(link, liveness)
            return 0
        finally:
            if self._liveness is not None:
                self._liveness.close()
            if commands is not None:
                commands.stop()
            links.close()
            if self._telemetry is not None:
                self._telemetry.close()
            if profiler is not None:
                profiler.stop()
            if training is not None:
                training.close()
            if v2 is not None:
                v2.close()
            if metrics is not None:
                metrics.close()
            server.close()
            for stage in self.stages.clear():
                stage.session.close()
            if own_dir:
                shutil.rmtree(data_dir, ignore_errors=True)
            log.info("node engine %s stopped", self.config.name)

    def _load(self, path: Path) -> Session:
        return load_partition(path, self.config.threads)

    def _publish_loop(self, interval: float) -> None:
        """Telemetry and stage statistics every ``interval`` seconds until stopped."""
        while True:
            if self._link is not None and self._link.connected.is_set():
                try:
                    self._publish_telemetry(self._link)
                except Exception:
                    log.exception("telemetry failed")
            if self.stop.wait(interval):
                return

    def _publish_telemetry(self, link: MqttLink) -> None:
        seq = self._liveness.seq if self._liveness is not None else 0
        sample = read_telemetry(self.node_id, self.config.profile, self.stages.keys(), self.clock, seq,
                                reader=self._telemetry)
        if self._links is not None:  # measured links (node_engine.links)
            sample = dataclasses.replace(sample, links=self._links.readings() or None)
        if self._battery is not None:  # the emulated charge (node_engine.sources.battery_emulated)
            sample = dataclasses.replace(sample, battery=self._battery.reading())
        link.publish(topics.information(self.node_id), encode(sample))
        for stage in self.stages.all():
            requests, mean_ms = stage.counters.snapshot()
            e2e_requests, e2e_ms = stage.counters.end_to_end()
            stats = StageStats(node_id=self.node_id, deployment_id=stage.deployment_id, stage=stage.index,
                               requests=requests, compute_ms_mean=mean_ms, ts=self.clock.now(),
                               generation=stage.generation, e2e_requests=e2e_requests, e2e_ms_mean=e2e_ms)
            link.publish(topics.job_resources(self.node_id), encode(stats))

    def _go_offline(self, link: MqttLink, liveness: Liveness) -> None:
        status = liveness.leave()  # first: our own offline must not read as a spoof
        if not link.publish_and_wait(topics.status(self.node_id), encode(status), qos=1, retain=True):
            log.warning("could not publish the offline status before exiting")
        link.stop()

    # ------------------------------------------------------------------ MQTT hooks

    def _next_will(self) -> tuple[str, bytes]:
        """Arm the will for the next connection attempt; each attempt gets a new seq."""
        assert self._liveness is not None
        return topics.status(self.node_id), encode(self._liveness.next_will())

    def _on_connected(self) -> None:
        """Birth on every (re)connect: a restarted broker has lost the retained status."""
        assert self._link is not None and self._liveness is not None
        birth = self._liveness.birth()
        self._link.publish(topics.status(self.node_id), encode(birth), qos=1, retain=True)
        log.info("online (seq %s)", birth.seq)

    def _publish_profile(self, result: ProfileResult) -> None:
        if self._link is not None:
            self._link.publish(topics.profile_result(self.node_id), encode(result), qos=1)

    def _report_state(self, state: StageState) -> None:
        if self._link is None:
            return
        self._link.publish(topics.job(self.node_id), encode(state), qos=1)
        log.info("stage %s/%s -> %s%s", state.deployment_id, state.stage, state.state,
                 f" ({state.reason})" if state.reason else "")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m node_engine``; returns the process exit code."""
    config = parse_args(argv)
    logging.basicConfig(level=getattr(logging, config.log_level, logging.INFO), stream=sys.stderr,
                        format=f"%(asctime)s %(levelname)s [{config.name}] %(name)s: %(message)s")
    shutdown = ShutdownSignal()
    stop = threading.Event()
    exit_code: list[int] = []
    engine = NodeEngine(config, stop=stop)
    # The engine runs on a worker thread; the main thread only waits for a signal, so the
    # signal handler never has to touch a lock (see treeline_common.shutdown).
    worker = threading.Thread(target=lambda: exit_code.append(engine.run()), name="node-engine")
    worker.start()
    while worker.is_alive() and not shutdown.wait(0.2):
        pass
    if shutdown:
        name = signal.Signals(shutdown.received).name if shutdown.received else "request"
        log.info("signal %s: stopping", name)
    stop.set()
    worker.join()
    return exit_code[0] if exit_code else 1
