"""The node engine daemon: wires data plane, registration, MQTT, commands and telemetry.

Start-up order matters: the data plane is bound first (its endpoint goes into the
registration body), then the node registers with the cluster (retrying until it answers),
then it connects to the broker the cluster named. The MQTT session carries a retained last
will ``offline`` and, on every (re)connect, a retained birth ``online`` whose ``seq`` grows
with every connection attempt. The sequence starts from the wall clock in milliseconds, so
it also grows across restarts of the process and the cluster can always tell a stale
status from a newer one.

Shutdown (SIGTERM/SIGINT) publishes ``offline``, disconnects without the will, unloads
the stages and closes the sockets; it takes well under two seconds. All state lives in a
:class:`NodeEngine` instance; the clock and the stop event are injected.
"""

from __future__ import annotations

import logging
import shutil
import signal
import sys
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path

from treeline_common import topics
from treeline_common.clock import Clock, SystemClock
from treeline_common.errors import TreelineError
from treeline_common.messages import NodeStatus, ProfileResult, StageState, StageStats, encode
from treeline_common.shutdown import ShutdownSignal

from node_engine.commands import CommandHandler
from node_engine.config import NodeConfig, parse_args
from node_engine.data_plane.server import DataPlaneServer
from node_engine.emulation import Emulator
from node_engine.mqtt_link import MqttLink
from node_engine.profiling import ProfileWorker
from node_engine.registration import register
from node_engine.runtime import load_partition
from node_engine.stages import Session, StageRunner, StageTable
from node_engine.telemetry import read_telemetry, registration_body

log = logging.getLogger(__name__)

DEFAULT_TELEMETRY_INTERVAL = 2.0


class NodeEngine:
    """One node engine. :meth:`run` blocks until ``stop`` is set and returns an exit code."""

    def __init__(self, config: NodeConfig, *, clock: Clock | None = None,
                 stop: threading.Event | None = None) -> None:
        self.config = config
        self.clock = clock or SystemClock()
        self.stop = stop or threading.Event()
        self.stages = StageTable()
        self.node_id = ""
        self._seq = int(self.clock.now() * 1000)
        self._seq_lock = threading.Lock()
        self._link: MqttLink | None = None

    # ------------------------------------------------------------------ main flow

    def run(self) -> int:
        own_dir = self.config.data_dir is None
        data_dir = Path(self.config.data_dir or tempfile.mkdtemp(prefix="treeline-node-"))
        runner = StageRunner(Emulator.from_profile(self.config.profile, self.stop), self.clock)
        # An emulated device computes one request at a time (a second worker would double its
        # emulated throughput); a real host overlaps two. Either way, requests waiting on a
        # downstream stage do not hold a worker, so the pipeline still has many in flight.
        workers = 1 if self.config.profile.emulated else 2
        server = DataPlaneServer(self.stages, runner, host=self.config.host, port=self.config.data_port,
                                 workers=workers, clock=self.clock, name=self.config.name)
        commands: CommandHandler | None = None
        profiler: ProfileWorker | None = None
        try:
            endpoint = server.start()
            body = registration_body(self.config.name, self.config.profile, endpoint, self.config.labels)
            try:
                registration = register(self.config.cluster_url, body, self.stop)
            except TreelineError as exc:
                log.error("cluster %s rejected the registration: %s", self.config.cluster_url, exc)
                return 2
            if registration is None:
                return 0  # stopped before the cluster answered
            self.node_id = registration.node_id
            log.info("registered as %s in cluster %s (profile %s, data plane %s)", self.node_id,
                     registration.cluster_id, self.config.profile.name, endpoint)
            commands = CommandHandler(self.node_id, self.stages, data_dir, self._load, self._report_state,
                                      self.clock, self.stop)
            link = MqttLink(f"treeline-node-{self.node_id}", registration.mqtt_host, registration.mqtt_port,
                            will=self._next_will, on_connected=self._on_connected)
            link.subscribe(topics.control_deploy(self.node_id), commands.on_deploy)
            link.subscribe(topics.control_delete(self.node_id), commands.on_delete)
            profile = self.config.profile
            profiler = ProfileWorker(self.node_id, profile.device_class, data_dir, self._publish_profile, self.clock,
                                     self.stop, threads=self.config.threads,
                                     speed_factor=profile.speed_factor if profile.emulated else 1.0)
            link.subscribe(topics.control_profile(self.node_id), profiler.on_profile)
            self._link = link
            commands.start()
            profiler.start()
            link.start()
            interval = (self.config.telemetry_interval or registration.telemetry_interval
                        or DEFAULT_TELEMETRY_INTERVAL)
            self._publish_loop(interval)
            self._go_offline(link)
            return 0
        finally:
            if commands is not None:
                commands.stop()
            if profiler is not None:
                profiler.stop()
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
                except Exception:  # noqa: BLE001 - a failed sample must not stop the loop
                    log.exception("telemetry failed")
            if self.stop.wait(interval):
                return

    def _publish_telemetry(self, link: MqttLink) -> None:
        sample = read_telemetry(self.node_id, self.config.profile, self.stages.keys(), self.clock)
        link.publish(topics.information(self.node_id), encode(sample))
        for stage in self.stages.all():
            requests, mean_ms = stage.counters.snapshot()
            stats = StageStats(node_id=self.node_id, deployment_id=stage.deployment_id, stage=stage.index,
                               requests=requests, compute_ms_mean=mean_ms, ts=self.clock.now())
            link.publish(topics.job_resources(self.node_id), encode(stats))

    def _go_offline(self, link: MqttLink) -> None:
        status = NodeStatus(node_id=self.node_id, state="offline", seq=self._current_seq(), ts=self.clock.now())
        if not link.publish_and_wait(topics.status(self.node_id), encode(status), qos=1, retain=True):
            log.warning("could not publish the offline status before exiting")
        link.stop()

    # ------------------------------------------------------------------ MQTT hooks

    def _current_seq(self) -> int:
        with self._seq_lock:
            return self._seq

    def _next_will(self) -> tuple[str, bytes]:
        """Arm the will for the next connection attempt; each attempt gets a new seq."""
        with self._seq_lock:
            self._seq += 1
            seq = self._seq
        will = NodeStatus(node_id=self.node_id, state="offline", seq=seq, ts=self.clock.now())
        return topics.status(self.node_id), encode(will)

    def _on_connected(self) -> None:
        """Birth on every (re)connect: a restarted broker has lost the retained status."""
        assert self._link is not None
        birth = NodeStatus(node_id=self.node_id, state="online", seq=self._current_seq(), ts=self.clock.now())
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
        log.info("signal %s: stopping", signal.Signals(shutdown.received).name if shutdown.received else "request")
    stop.set()
    worker.join()
    return exit_code[0] if exit_code else 1
