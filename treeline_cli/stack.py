"""Start and stop a whole Treeline stack as separate OS processes.

``treeline up``, ``treeline demo`` and the end-to-end tests all go through :class:`Stack`:
a broker (unless an external one is given), the root orchestrator, one cluster
orchestrator and N node engines, each its own process. Children get a parent-death
signal, so even a SIGKILLed ``treeline up`` leaves no orphan; :meth:`Stack.stop` sends
SIGTERM to all and SIGKILL to what has not exited in time.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from treeline_cli.broker import BrokerProcess, die_with_parent, start_broker
from treeline_common.http import call_json
from treeline_common.netutil import free_port, poll_until
from treeline_common.profiles import DEFAULT_DEMO_PROFILES, get_profile

log = logging.getLogger(__name__)

@dataclass
class ManagedProcess:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    log_file: IO[bytes]

    def alive(self) -> bool:
        return self.process.poll() is None


@dataclass
class StackConfig:
    data_dir: Path
    nodes: int = 3
    profiles: tuple[str, ...] = DEFAULT_DEMO_PROFILES
    mqtt_url: str | None = None  # external broker; None = start one
    broker_kind: str = "auto"
    host: str = "127.0.0.1"
    root_port: int = 10000
    cluster_port: int = 10100
    telemetry_interval: float = 2.0
    push_interval: float = 15.0
    node_threads: int = 0
    log_level: str = "INFO"
    # Extra labels per node name; by default the first rpi4 is the "camera" the example SLAs
    # pin private inputs to.
    node_labels: dict[str, str] = field(default_factory=lambda: {"rpi4-1": "camera"})

    def node_profile(self, index: int) -> str:
        return self.profiles[index % len(self.profiles)]


@dataclass
class Stack:
    """A running stack; build it with :func:`start_stack`."""

    config: StackConfig
    broker: BrokerProcess | None = None
    mqtt_url: str = ""
    processes: list[ManagedProcess] = field(default_factory=list)

    @property
    def root_url(self) -> str:
        return f"http://{self.config.host}:{self.config.root_port}"

    @property
    def cluster_url(self) -> str:
        return f"http://{self.config.host}:{self.config.cluster_port}"

    def spawn(self, name: str, args: list[str]) -> ManagedProcess:
        """Start ``python -m <args>`` as a child whose output goes to ``<data_dir>/logs/<name>.log``."""
        log_dir = self.config.data_dir / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        log_path = log_dir / f"{name}.log"
        log_file = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        process = subprocess.Popen(
            [sys.executable, "-m", *args],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=die_with_parent,
        )
        managed = ManagedProcess(name, process, log_path, log_file)
        self.processes.append(managed)
        log.info("started %s (pid %s), log %s", name, process.pid, log_path)
        return managed

    def process(self, name: str) -> ManagedProcess:
        for managed in self.processes:
            if managed.name == name:
                return managed
        raise KeyError(name)

    def check_alive(self) -> None:
        """Raise with the tail of its log if any child has exited."""
        for managed in self.processes:
            if not managed.alive():
                raise RuntimeError(
                    f"{managed.name} exited with {managed.process.returncode}:\n{tail(managed.log_path)}"
                )

    def stop(self, timeout: float = 8.0) -> None:
        """Stop orchestrators first, then nodes, then the broker; SIGKILL stragglers. Idempotent.

        Orchestrators go first so that nodes leaving at shutdown are not mistaken for node
        failures (which would re-plan, then fail, every deployment on the way down).
        """
        orchestrators = [m for m in self.processes if not m.name.startswith("node-")]
        nodes = [m for m in self.processes if m.name.startswith("node-")]
        for group in (orchestrators, nodes):
            for managed in group:
                if managed.alive():
                    managed.process.send_signal(signal.SIGTERM)
            for managed in group:
                try:
                    managed.process.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    log.warning("%s did not stop in %.0fs; killing it", managed.name, timeout)
                    managed.process.kill()
                    managed.process.wait(timeout=timeout)
                managed.log_file.close()
        if self.broker is not None:
            self.broker.stop()

    # ------------------------------------------------------------------ waiting

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Wait until the root answers, the cluster is registered and every node is online."""
        def root_has_cluster() -> bool:
            self.check_alive()
            clusters = call_json("GET", f"{self.root_url}/api/clusters/", timeout=2)["clusters"]
            return any(c.get("active", True) for c in clusters)

        poll_until(root_has_cluster, timeout, interval=0.2, what="the cluster to register with the root")

        def nodes_online() -> bool:
            self.check_alive()
            nodes = call_json("GET", f"{self.cluster_url}/api/nodes", timeout=2)["nodes"]
            return sum(1 for n in nodes if n.get("online")) >= self.config.nodes

        poll_until(nodes_online, timeout, interval=0.2, what=f"{self.config.nodes} nodes to come online")


def start_stack(config: StackConfig) -> Stack:
    """Start broker, root, cluster and nodes; on any failure stop what was started."""
    for profile in config.profiles:
        get_profile(profile)  # unknown names fail before anything starts
    config.data_dir.mkdir(parents=True, exist_ok=True)
    stack = Stack(config)
    try:
        if config.mqtt_url:
            stack.mqtt_url = config.mqtt_url
        else:
            stack.broker = start_broker(config.broker_kind, workdir=config.data_dir / "broker")
            stack.mqtt_url = stack.broker.url
        level = ["--log-level", config.log_level]
        stack.spawn(
            "root",
            ["root_orchestrator", "--host", config.host, "--port", str(config.root_port),
             "--data-dir", str(config.data_dir / "root"), *level],
        )
        stack.spawn(
            "cluster",
            ["cluster_orchestrator", "--host", config.host, "--port", str(config.cluster_port),
             "--root-url", stack.root_url, "--mqtt-url", stack.mqtt_url,
             "--data-dir", str(config.data_dir / "cluster"), "--name", "cluster-1",
             "--push-interval", str(config.push_interval), *level],
        )
        counts: dict[str, int] = {}
        for index in range(config.nodes):
            profile = config.node_profile(index)
            counts[profile] = counts.get(profile, 0) + 1
            name = f"{profile}-{counts[profile]}"
            stack.spawn(
                f"node-{name}",
                ["node_engine", "--cluster-url", stack.cluster_url, "--profile", profile, "--name", name,
                 "--host", config.host, "--telemetry-interval", str(config.telemetry_interval),
                 "--data-dir", str(config.data_dir / "nodes" / name),
                 "--threads", str(config.node_threads), "--labels", config.node_labels.get(name, ""), *level],
            )
    except BaseException:
        stack.stop()
        raise
    return stack


def tail(path: Path, lines: int = 30) -> str:
    """The last lines of a log file, for error messages."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def pick_ports(config: StackConfig) -> StackConfig:
    """Replace the default ports by free ones (tests run stacks side by side)."""
    config.root_port = free_port()
    config.cluster_port = free_port()
    return config


def default_data_dir() -> Path:
    return Path(os.environ.get("TREELINE_DATA_DIR", Path.cwd() / ".treeline"))
