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

The parts live in their own modules, and everything public stays importable from here:
:mod:`.stack_config` (:class:`StackConfig`, :func:`pick_ports`), :mod:`.stack_checks` (the port
checks), :mod:`.stack_secrets` (the tokens) and :mod:`.processes` (one child, its log).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from cluster_orchestrator.nodes import JOIN_TOKEN_ENV
from cluster_orchestrator.root_client import ROOT_TOKEN_ENV
from root_orchestrator.auth.settings import CLUSTER_TOKEN_ENV
from treeline_cli.broker import BrokerProcess, die_with_parent, mosquitto_binary, start_broker
from treeline_cli.processes import ManagedProcess, last_error, tail
from treeline_cli.stack_checks import (
    PortClaim,
    PortInUse,
    check_ports,
    port_claims,
    port_holder,
    port_is_free,
)
from treeline_cli.stack_config import StackConfig, default_data_dir, pick_ports
from treeline_cli.stack_secrets import stack_secrets
from treeline_common.config import INSTANCE_ID_ENV
from treeline_common.http import call_json
from treeline_common.mqtt_acl import CLUSTER_USER, PASSWORD_ENV, BrokerAuth, new_password
from treeline_common.profiles import get_profile

# The public API of starting a stack stays importable from here (commands, tests, benchmarks).
__all__ = [
    "CLOCK_SLACK_S", "ManagedProcess", "PortClaim", "PortInUse", "Stack", "StackConfig", "check_ports",
    "default_data_dir", "last_error", "node_args", "pick_ports", "port_claims", "port_holder",
    "port_is_free", "stack_secrets", "start_stack", "tail",
]

log = logging.getLogger(__name__)

# Registration times come from the cluster's wall clock, launch times from ours (the same machine):
# slack for the clocks' resolution only.
CLOCK_SLACK_S = 0.5


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
