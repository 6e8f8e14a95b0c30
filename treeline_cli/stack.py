"""Start and stop a whole Treeline stack as separate OS processes.

``treeline up``, ``treeline demo`` and the end-to-end tests all go through :class:`Stack`:
a broker (unless an external one is given), the root orchestrator, one cluster
orchestrator and N node engines, each its own process. Children get a parent-death
signal, so even a SIGKILLed ``treeline up`` leaves no orphan; :meth:`Stack.stop` sends
SIGTERM to all and SIGKILL to what has not exited in time.

Fault injection: every child keeps the command line it was started with, so a test can
``kill`` (SIGKILL), ``freeze`` (SIGSTOP) / ``thaw`` (SIGCONT) and ``restart`` any one of
them (``root``, ``cluster``, ``node-<name>``) as the same process would be restarted by a
supervisor: same arguments, same data directory, same ports, log appended. The broker the
stack started is restarted on its own port (:meth:`Stack.restart_broker`).

Each stack generates one cluster token and hands it to the root (``TREELINE_CLUSTER_TOKEN``) and
to the cluster (``TREELINE_ROOT_TOKEN``) through the environment, never the command line; the
root sends it back on its calls to the cluster. Likewise one join token goes to the cluster and
to every node engine (``TREELINE_JOIN_TOKEN``). Both are kept in ``<data_dir>/stack_secrets.json``
(0600), so a stack started again on the same data directory keeps its cluster's identity at the
root. When the stack starts Mosquitto itself (and ``mqtt_auth`` is on), the broker refuses
anonymous clients and enforces the ACL of :mod:`treeline_common.mqtt_acl`: the stack writes the
password and ACL files into the broker's directory, and the cluster (``--mqtt-auth-dir``, its
password in ``TREELINE_MQTT_PASSWORD``) adds every node's credentials there and signals the
broker to reload (:attr:`Stack.mqtt_username` / :attr:`Stack.mqtt_password` log in as the cluster).

Two stacks never collide. :func:`check_ports` runs before anything starts: a port the stack
needs (root, cluster, the broker's when it is fixed) that another process holds fails at once
with :class:`PortInUse`, which names the port and, when a Treeline process answers there,
which. And readiness never trusts a port alone: every launch gets a fresh instance id
(``TREELINE_INSTANCE_ID`` in its environment), the root and the cluster report it in
``GET /api/health``, and :meth:`Stack.wait_ready` accepts only the answer carrying its own
child's id, so another stack's server on the same port is never taken for ours. Children
are started in dependency order (root, then cluster, then nodes, each once the one before
answers) so that none of them logs a connection failure at a normal start.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from cluster_orchestrator.nodes import JOIN_TOKEN_ENV, new_join_token
from cluster_orchestrator.root_client import ROOT_TOKEN_ENV
from root_orchestrator.auth.settings import CLUSTER_TOKEN_ENV, new_cluster_token
from treeline_cli.broker import BrokerProcess, die_with_parent, mosquitto_binary, start_broker
from treeline_common.config import INSTANCE_ID_ENV
from treeline_common.http import call_json
from treeline_common.mqtt_acl import (
    CLUSTER_USER,
    PASSWORD_ENV,
    BrokerAuth,
    TlsFiles,
    new_password,
    write_private,
)
from treeline_common.netutil import free_port
from treeline_common.profiles import DEFAULT_DEMO_PROFILES, get_profile

log = logging.getLogger(__name__)

# Registration times come from the cluster's wall clock, launch times from ours (the same machine):
# slack for the clocks' resolution only.
CLOCK_SLACK_S = 0.5


@dataclass
class ManagedProcess:
    """One child process and the ``python -m`` arguments it was started with."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    log_file: IO[bytes]
    args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)  # set on top of this process's environment
    frozen: bool = False
    # what this launch reports in GET /api/health (a fresh one per launch; see the module docstring)
    instance_id: str = ""
    started_at: float = 0.0  # wall clock (time.time()) of the launch

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self, timeout: float = 10.0) -> None:
        """SIGKILL and reap: a crash (no will sent, nothing flushed). Idempotent."""
        if self.alive():
            self.process.kill()
        self.process.wait(timeout=timeout)
        self.frozen = False

    def freeze(self) -> None:
        """SIGSTOP: the process keeps its sockets open but answers nothing (a hung device)."""
        if self.alive():
            self.process.send_signal(signal.SIGSTOP)
            self.frozen = True

    def thaw(self) -> None:
        """SIGCONT after :meth:`freeze`."""
        if self.alive():
            self.process.send_signal(signal.SIGCONT)
        self.frozen = False

    def terminate(self, timeout: float = 8.0) -> None:
        """SIGTERM (thawing a frozen process so it can act on it), SIGKILL after ``timeout``."""
        self.request_stop()
        self.wait_or_kill(timeout)

    def request_stop(self) -> None:
        """Send SIGTERM (and SIGCONT to a frozen process); does not wait."""
        if self.alive():
            self.process.send_signal(signal.SIGTERM)
            if self.frozen:
                self.thaw()

    def wait_or_kill(self, timeout: float) -> None:
        """Wait ``timeout`` seconds for the process to exit, then SIGKILL it."""
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            log.warning("%s did not stop in %.0fs; killing it", self.name, timeout)
            self.kill(timeout)


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
    broker_port: int = 0  # the broker the stack starts; 0: a free one
    telemetry_interval: float = 2.0
    push_interval: float = 15.0
    heartbeat_misses: int = 3
    # Extra command-line arguments for each kind of process (tests shorten timeouts with them).
    root_args: tuple[str, ...] = ()
    cluster_args: tuple[str, ...] = ()
    node_args: tuple[str, ...] = ()
    node_threads: int = 0
    log_level: str = "INFO"
    # Extra labels per node name; by default the first rpi4 is the "camera" the example SLAs
    # pin private inputs to.
    node_labels: dict[str, str] = field(default_factory=lambda: {"rpi4-1": "camera"})
    # MQTT identities and ACL on the broker the stack starts (Mosquitto only; see the module docstring)
    mqtt_auth: bool = True
    # MQTT over TLS on the broker the stack starts: its cert/key, and the CA the clients verify it with
    mqtt_tls: TlsFiles | None = None

    def node_profile(self, index: int) -> str:
        return self.profiles[index % len(self.profiles)]


@dataclass
class Stack:
    """A running stack; build it with :func:`start_stack`."""

    config: StackConfig
    broker: BrokerProcess | None = None
    mqtt_url: str = ""
    processes: list[ManagedProcess] = field(default_factory=list)
    cluster_token: str = ""  # this stack's cluster authenticates to its root with it
    join_token: str = ""  # this stack's node engines register with it
    mqtt_username: str = ""  # the cluster's MQTT identity when the broker enforces identities
    mqtt_password: str = ""

    @property
    def root_url(self) -> str:
        return f"http://{self.config.host}:{self.config.root_port}"

    @property
    def cluster_url(self) -> str:
        return f"http://{self.config.host}:{self.config.cluster_port}"

    def spawn(self, name: str, args: list[str], env: dict[str, str] | None = None) -> ManagedProcess:
        """Start ``python -m <args>`` as a child whose output goes to ``<data_dir>/logs/<name>.log``;
        ``env`` is added to the inherited environment (secrets go there, not on the command line)."""
        if any(m.name == name for m in self.processes):
            raise ValueError(f"a process named {name!r} is already part of the stack")
        managed = self._launch(name, args, env or {})
        self.processes.append(managed)
        return managed

    def _launch(self, name: str, args: list[str], env: dict[str, str]) -> ManagedProcess:
        log_dir = self.config.data_dir / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        log_path = log_dir / f"{name}.log"
        log_file = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        instance_id = uuid.uuid4().hex
        started_at = time.time()
        process = subprocess.Popen(
            [sys.executable, "-m", *args],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=die_with_parent,
            env={**os.environ, **env, INSTANCE_ID_ENV: instance_id},
        )
        log.info("started %s (pid %s, instance %s), log %s", name, process.pid, instance_id, log_path)
        return ManagedProcess(name, process, log_path, log_file, list(args), dict(env),
                              instance_id=instance_id, started_at=started_at)

    def process(self, name: str) -> ManagedProcess:
        for managed in self.processes:
            if managed.name == name:
                return managed
        raise KeyError(name)

    # ------------------------------------------------------------------ fault injection

    @property
    def node_names(self) -> list[str]:
        """Names of the node engines (``server-1``, ...), in start order."""
        return [m.name.removeprefix("node-") for m in self.processes if m.name.startswith("node-")]

    def node(self, name: str) -> ManagedProcess:
        """The node engine process of node ``name`` (``server-1``, not ``node-server-1``)."""
        return self.process(f"node-{name}")

    def kill(self, name: str) -> ManagedProcess:
        """SIGKILL the child ``name`` (``root``, ``cluster``, ``node-<name>``) and reap it."""
        managed = self.process(name)
        managed.kill()
        log.info("killed %s (pid %s)", name, managed.pid)
        return managed

    def freeze(self, name: str) -> ManagedProcess:
        managed = self.process(name)
        managed.freeze()
        log.info("froze %s (pid %s)", name, managed.pid)
        return managed

    def thaw(self, name: str) -> ManagedProcess:
        managed = self.process(name)
        managed.thaw()
        return managed

    def restart(self, name: str, *, graceful: bool = False) -> ManagedProcess:
        """Start child ``name`` again with its own command line (same data dir and ports).

        A live process is first killed (SIGKILL), or stopped with SIGTERM when ``graceful``.
        The new process replaces the old in :attr:`processes`; its log is appended to.
        Call it from a thread that outlives the child (the main thread): the parent-death
        signal fires when the *thread* that started a child exits.
        """
        index, old = next((i, m) for i, m in enumerate(self.processes) if m.name == name)
        if graceful:
            old.terminate()
        else:
            old.kill()
        old.log_file.close()
        managed = self._launch(name, old.args, old.env)
        self.processes[index] = managed
        return managed

    def add_node(self, profile: str, name: str | None = None, labels: str = "") -> ManagedProcess:
        """Start one more node engine (a node joining the running cluster)."""
        get_profile(profile)
        if name is None:
            taken = set(self.node_names)
            name = next(f"{profile}-{i}" for i in range(1, len(taken) + 2) if f"{profile}-{i}" not in taken)
        return self.spawn(f"node-{name}", node_args(self.config, self.cluster_url, profile, name, labels),
                          env=self.node_env())

    def node_env(self) -> dict[str, str]:
        """The environment a node engine of this stack gets (its join token)."""
        return {JOIN_TOKEN_ENV: self.join_token} if self.join_token else {}

    def kill_broker(self) -> None:
        """SIGKILL the broker this stack started (an external one cannot be touched)."""
        self._own_broker().kill()

    def restart_broker(self) -> None:
        """Start the stack's broker again on the same port (after :meth:`kill_broker`)."""
        self._own_broker().restart()

    def _own_broker(self) -> BrokerProcess:
        if self.broker is None:
            raise RuntimeError("this stack uses an external broker; it did not start one")
        return self.broker

    def check_alive(self) -> None:
        """Raise if any child has exited: the first line names it with the last ERROR its log
        holds (why it stopped, e.g. a port or a node name taken), the tail of its log follows."""
        for managed in self.processes:
            if not managed.alive():
                reason = last_error(managed.log_path)
                raise RuntimeError(f"{managed.name} exited with {managed.process.returncode}"
                                   f"{f' ({reason})' if reason else ''}:\n{tail(managed.log_path)}")

    def stop(self, timeout: float = 8.0) -> None:
        """Stop orchestrators first, then nodes, then the broker; SIGKILL stragglers. Idempotent.

        Orchestrators go first so that nodes leaving at shutdown are not mistaken for node
        failures (which would re-plan, then fail, every deployment on the way down).
        """
        orchestrators = [m for m in self.processes if not m.name.startswith("node-")]
        nodes = [m for m in self.processes if m.name.startswith("node-")]
        for group in (orchestrators, nodes):
            for managed in group:
                managed.request_stop()
            for managed in group:
                managed.wait_or_kill(timeout)
                managed.log_file.close()
        if self.broker is not None:
            self.broker.stop()

    # ------------------------------------------------------------------ waiting

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Wait until our root and our cluster answer, the cluster is registered with the root
        and every node is online.

        "Our": the root's and the cluster's ``GET /api/health`` must carry the instance id this
        stack gave the child (another stack's server on the same port is never taken for ours),
        the cluster the root lists must have our cluster's URL, and a node counts only when
        online under our node's name AND registered after we started that node's process (a
        cluster restarted on an old data directory still lists the previous run's nodes as
        online for a while). A child that exits meanwhile fails the wait at once, with the tail
        of its log.
        """
        self.wait_answering("root", self.root_url, timeout)
        self.wait_answering("cluster", self.cluster_url, timeout)

        def root_has_our_cluster() -> bool:
            headers = {"Authorization": f"Bearer {self.cluster_token}"} if self.cluster_token else None
            answer = call_json("GET", f"{self.root_url}/api/clusters/", headers=headers, timeout=2)
            clusters = answer.get("clusters", []) if isinstance(answer, dict) else answer
            return any(c.get("url") == self.cluster_url and c.get("active", True) for c in clusters)

        self._poll_alive(root_has_our_cluster, timeout, "the cluster to register with the root")

        def nodes_online() -> bool:
            nodes = call_json("GET", f"{self.cluster_url}/api/nodes", timeout=2)["nodes"]
            launched = {name: self.node(name).started_at for name in self.node_names}
            ready = {n.get("name") for n in nodes if n.get("online") and n.get("name") in launched
                     and float(n.get("registered_at") or 0) >= launched[n["name"]] - CLOCK_SLACK_S}
            return len(ready) == len(launched)

        self._poll_alive(nodes_online, timeout, f"{len(self.node_names)} nodes to come online")

    def wait_answering(self, name: str, url: str, timeout: float = 60.0) -> None:
        """Wait until ``url``'s ``GET /api/health`` answers with child ``name``'s instance id.

        An answer with another id is another process on that port (our child has not bound it
        yet, or cannot): it is remembered for the error message, never accepted.
        """
        managed = self.process(name)
        seen: list[str] = []

        def answers_as_ours() -> bool:
            answer = call_json("GET", f"{url}/api/health", timeout=2)
            instance = answer.get("instance_id") if isinstance(answer, dict) else None
            if instance == managed.instance_id:
                return True
            seen[:] = [f"{url} answers as another process (instance {instance})"]
            return False

        try:
            self._poll_alive(answers_as_ours, timeout, f"the {name} to answer at {url}", interval=0.05)
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}; {seen[0]}" if seen else str(exc)) from None

    def _poll_alive(self, probe: Callable[[], bool], timeout: float, what: str,
                    interval: float = 0.2) -> None:
        """``poll_until`` that raises at once (with its log) when a child has exited."""
        deadline = time.monotonic() + timeout
        last_error: Exception | None = None
        while True:
            self.check_alive()
            try:
                if probe():
                    return
            except Exception as exc:  # noqa: BLE001 - the peer may not be up yet
                last_error = exc
            if time.monotonic() >= deadline:
                suffix = f" (last error: {last_error})" if last_error else ""
                raise TimeoutError(f"timed out after {timeout:.1f}s waiting for {what}{suffix}")
            time.sleep(interval)


class PortInUse(RuntimeError):
    """A port the stack needs is held by another process; raised before anything starts.

    ``holder`` says who answers there when it is a Treeline process (``a Treeline root,
    instance 1f2e...``), else is empty.
    """

    def __init__(self, claim: PortClaim, holder: str = "") -> None:
        who = f" by {holder}" if holder else " by another process"
        super().__init__(f"port {claim.port} ({claim.role}) is already in use{who}")
        self.claim = claim
        self.holder = holder


@dataclass(frozen=True)
class PortClaim:
    """A port the stack will listen on: which process, and the setting that chose it."""

    port: int
    role: str  # root | cluster | broker
    setting: str  # root_port | cluster_port | broker_port


def port_claims(config: StackConfig) -> list[PortClaim]:
    """Every fixed port the stack will listen on. Node data ports are picked free by each node
    (never fixed by ``up``), and a broker on port 0 takes a free one, so neither is claimed."""
    claims = [PortClaim(config.root_port, "root", "root_port"),
              PortClaim(config.cluster_port, "cluster", "cluster_port")]
    if not config.mqtt_url and config.broker_port:
        claims.append(PortClaim(config.broker_port, "broker", "broker_port"))
    return claims


def port_is_free(host: str, port: int) -> bool:
    """Whether ``host:port`` can be bound now, the way our servers bind it (``SO_REUSEADDR``:
    a port left in TIME_WAIT by a stopped stack counts as free, a listening one does not)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def port_holder(host: str, port: int, timeout: float = 0.5) -> str:
    """``a Treeline root (instance 1f2e3d4c)`` when a Treeline process answers ``GET /api/health``
    on the port, else ``""``. Bounded by ``timeout``: it only makes an error message better."""
    try:
        answer: Any = call_json("GET", f"http://{host}:{port}/api/health", timeout=timeout)
    except Exception:  # noqa: BLE001 - not HTTP, not ours, or not answering: nothing to say
        return ""
    if not isinstance(answer, dict) or "instance_id" not in answer:
        return ""
    name = str(answer.get("name") or "process")
    kind = "root" if name == "root" else f"cluster ({name})"
    return f"a Treeline {kind}, instance {str(answer['instance_id'])[:8]}"


def check_ports(config: StackConfig) -> None:
    """Raise before anything starts if the stack cannot have all of its ports.

    ValueError when two claims name the same port (a usage error); :class:`PortInUse` for the
    first port another process holds. Fast (one bind per port, plus one short health probe of
    a busy port), so ``treeline up`` fails well within 2 seconds.
    """
    claims = port_claims(config)
    for index, claim in enumerate(claims):
        for other in claims[:index]:
            if other.port == claim.port:
                raise ValueError(f"{other.setting} and {claim.setting} are both {claim.port}")
    for claim in claims:
        if not port_is_free(config.host, claim.port):
            raise PortInUse(claim, port_holder(config.host, claim.port))


def start_stack(config: StackConfig, timeout: float = 60.0) -> Stack:
    """Start broker, root, cluster and nodes; on any failure stop what was started.

    Checks every port first (:func:`check_ports`). The cluster starts once the root answers
    as our root, the nodes once the cluster answers as ours (``timeout`` bounds each wait), so
    no child retries a connection at a normal start; :meth:`Stack.wait_ready` then waits for
    registration and the nodes.
    """
    for profile in config.profiles:
        get_profile(profile)  # unknown names fail before anything starts
    check_ports(config)
    config.data_dir.mkdir(parents=True, exist_ok=True)
    stack = Stack(config)
    try:
        stack.cluster_token, stack.join_token = stack_secrets(config.data_dir)
        cluster_mqtt: list[str] = []
        cluster_env = {ROOT_TOKEN_ENV: stack.cluster_token, JOIN_TOKEN_ENV: stack.join_token}
        if config.mqtt_url:
            stack.mqtt_url = config.mqtt_url
        else:
            workdir = config.data_dir / "broker"
            auth = None
            if config.mqtt_auth and (config.broker_kind == "mosquitto"
                                     or (config.broker_kind == "auto" and mosquitto_binary())):
                auth = BrokerAuth(workdir)
                stack.mqtt_username, stack.mqtt_password = CLUSTER_USER, new_password()
                auth.write(stack.mqtt_password)
                cluster_mqtt += ["--mqtt-auth-dir", str(workdir), "--mqtt-username", CLUSTER_USER]
                cluster_env[PASSWORD_ENV] = stack.mqtt_password
            stack.broker = start_broker(config.broker_kind, port=config.broker_port or None,
                                        workdir=workdir, auth=auth, tls=config.mqtt_tls)
            stack.mqtt_url = stack.broker.url
            if config.mqtt_tls is not None:
                ca = ["--mqtt-ca", config.mqtt_tls.ca] if config.mqtt_tls.ca else []
                cluster_mqtt += ["--mqtt-tls", *ca]
        level = ["--log-level", config.log_level]
        stack.spawn(
            "root",
            ["root_orchestrator", "--host", config.host, "--port", str(config.root_port),
             "--public-url", stack.root_url,
             "--data-dir", str(config.data_dir / "root"), *level, *config.root_args],
            env={CLUSTER_TOKEN_ENV: stack.cluster_token},
        )
        stack.wait_answering("root", stack.root_url, timeout)
        stack.spawn(
            "cluster",
            ["cluster_orchestrator", "--host", config.host, "--port", str(config.cluster_port),
             "--public-url", stack.cluster_url,
             "--root-url", stack.root_url, "--mqtt-url", stack.mqtt_url,
             "--data-dir", str(config.data_dir / "cluster"), "--name", "cluster-1",
             "--push-interval", str(config.push_interval),
             "--telemetry-interval", str(config.telemetry_interval),
             "--heartbeat-misses", str(config.heartbeat_misses), *cluster_mqtt, *level, *config.cluster_args],
            env=cluster_env,
        )
        stack.wait_answering("cluster", stack.cluster_url, timeout)
        counts: dict[str, int] = {}
        for index in range(config.nodes):
            profile = config.node_profile(index)
            counts[profile] = counts.get(profile, 0) + 1
            name = f"{profile}-{counts[profile]}"
            stack.spawn(f"node-{name}", node_args(config, stack.cluster_url, profile, name,
                                                  config.node_labels.get(name, "")), env=stack.node_env())
    except BaseException:
        stack.stop()
        raise
    return stack


def node_args(config: StackConfig, cluster_url: str, profile: str, name: str, labels: str = "") -> list[str]:
    """The ``python -m node_engine`` arguments of node ``name`` (its data dir is named after it)."""
    tls = config.mqtt_tls if not config.mqtt_url else None
    tls_args = ["--mqtt-tls", *(["--mqtt-ca", tls.ca] if tls.ca else [])] if tls is not None else []
    return ["node_engine", "--cluster-url", cluster_url, "--profile", profile, "--name", name,
            "--host", config.host, "--telemetry-interval", str(config.telemetry_interval),
            "--data-dir", str(config.data_dir / "nodes" / name),
            "--threads", str(config.node_threads), "--labels", labels,
            "--log-level", config.log_level, *tls_args, *config.node_args]


def stack_secrets(data_dir: Path) -> tuple[str, str]:
    """``(cluster token, join token)`` of the stack on ``data_dir``: made once, then kept in
    ``<data_dir>/stack_secrets.json`` (0600) so a restart keeps the cluster's identity at the root."""
    path = data_dir / "stack_secrets.json"
    try:
        stored = json.loads(path.read_text())
        if isinstance(stored, dict) and stored.get("cluster_token") and stored.get("join_token"):
            return str(stored["cluster_token"]), str(stored["join_token"])
    except (OSError, ValueError):
        pass
    secrets = {"cluster_token": new_cluster_token(), "join_token": new_join_token()[0]}
    write_private(path, json.dumps(secrets))
    return secrets["cluster_token"], secrets["join_token"]


def tail(path: Path, lines: int = 30) -> str:
    """The last lines of a log file, for error messages."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def last_error(path: Path, lines: int = 30) -> str:
    """The message of the last ERROR/CRITICAL line among the last ``lines`` of a log ("" if none)."""
    for line in reversed(tail(path, lines).splitlines()):
        for level in (" ERROR ", " CRITICAL "):
            if level in line:
                message = line.split(level, 1)[1]
                return message.split(": ", 1)[1] if ": " in message else message
    return ""


def pick_ports(config: StackConfig) -> StackConfig:
    """Replace the default ports by free ones (tests run stacks side by side)."""
    config.root_port = free_port()
    config.cluster_port = free_port()
    return config


def default_data_dir() -> Path:
    return Path(os.environ.get("TREELINE_DATA_DIR", Path.cwd() / ".treeline"))
