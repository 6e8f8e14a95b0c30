"""Start and stop a whole Treeline stack as separate OS processes.

``treeline up``, ``treeline demo`` and the end-to-end tests all go through :class:`Stack`:
the root orchestrator and one or more clusters, each cluster its own orchestrator, broker
(unless an external one is given) and node engines, each its own process. Children get a parent-death
signal, so even a SIGKILLed ``treeline up`` leaves no orphan; :meth:`Stack.stop` sends
SIGTERM to all and SIGKILL to what has not exited in time.

Fault injection: every child keeps the command line it was started with, so a test can
``kill`` (SIGKILL), ``freeze`` (SIGSTOP) / ``thaw`` (SIGCONT) and ``restart`` any one of
them (``root``, ``cluster``, ``cluster-<i>``, ``node-<name>``) as the same process would be
restarted by a supervisor: same arguments, same data directory, same ports, log appended. A
broker the stack started (``broker``, ``broker-<i>``) is restarted on its own port
(:meth:`Stack.restart_broker`, or ``restart`` with its name).

Several clusters (``StackConfig.clusters``): :attr:`Stack.clusters` lists them as
:class:`~.stack_clusters.ClusterInfo` records (name, URL, process and broker names, broker port,
node names); cluster 1 keeps the names a one-cluster stack always had, so :attr:`Stack.cluster_url`,
:attr:`Stack.broker`, :attr:`Stack.mqtt_username` and the tokens below are cluster 1's. See
:mod:`.stack_clusters` for the layout.

Each stack generates a cluster token per cluster and hands them all to the root
(``TREELINE_CLUSTER_TOKEN``, comma-separated) and each to its cluster (``TREELINE_ROOT_TOKEN``)
through the environment, never the command line; the root sends it back on its calls to that
cluster. Likewise a join token per cluster goes to the cluster and to its node engines
(``TREELINE_JOIN_TOKEN``). They are kept in ``<data_dir>/stack_secrets.json`` (0600), so a stack
started again on the same data directory keeps its clusters' identities at the root. When the
stack starts Mosquitto itself (and ``mqtt_auth`` is on), each broker refuses anonymous clients
and enforces the ACL of :mod:`treeline_common.mqtt_acl`: the stack writes the password and ACL
files into the broker's directory, and the cluster (``--mqtt-auth-dir``, its password in
``TREELINE_MQTT_PASSWORD``) adds every node's credentials there and signals the broker to reload
(:attr:`Stack.mqtt_username` / :attr:`Stack.mqtt_password` log in as cluster 1, each
:class:`~.stack_clusters.ClusterInfo` carries its own).

Two stacks never collide. :func:`check_ports` runs before anything starts: a port the stack
needs (root, every cluster, every broker's when it is fixed) that another process holds fails at
once with :class:`PortInUse`, which names the port and, when a Treeline process answers there,
which. And readiness never trusts a port alone (:mod:`.stack_ready`). Children are started in
dependency order (root, then the clusters, then nodes, each once the one before answers) so
that none of them logs a connection failure at a normal start.

The parts live in their own modules, and everything public stays importable from here:
:mod:`.stack_config` (:class:`StackConfig`, :func:`pick_ports`), :mod:`.stack_checks` (the port
checks), :mod:`.stack_secrets` (the tokens), :mod:`.stack_clusters` (a cluster and its broker),
:mod:`.stack_ready` (waiting for our own children) and :mod:`.processes` (one child, its log).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field

from cluster_orchestrator.nodes import JOIN_TOKEN_ENV
from root_orchestrator.auth.settings import CLUSTER_TOKEN_ENV
from treeline_cli.broker import BrokerProcess
from treeline_cli.processes import ManagedProcess, last_error, tail
from treeline_cli.stack_checks import (
    PortClaim,
    PortInUse,
    check_ports,
    port_claims,
    port_holder,
    port_is_free,
)
from treeline_cli.stack_clusters import (
    FIRST_CLUSTER_ALIASES,
    ClusterInfo,
    FirstCluster,
    cluster_command,
    find_cluster,
    node_plan,
    start_cluster_broker,
)
from treeline_cli.stack_config import (
    StackConfig,
    default_data_dir,
    pick_ports,
    remove_stack_file,
    write_stack_file,
)
from treeline_cli.stack_mongo import MONGO_PROCESS, cluster_store_url, root_store_url, start_store
from treeline_cli.stack_ready import CLOCK_SLACK_S, wait_answering, wait_ready
from treeline_cli.stack_secrets import cluster_secrets, stack_secrets
from treeline_common.config import INSTANCE_ID_ENV
from treeline_common.profiles import get_profile
from treeline_common.shutdown import die_with_parent

# The public API of starting a stack stays importable from here (commands, tests, benchmarks).
__all__ = [
    "CLOCK_SLACK_S", "ClusterInfo", "ManagedProcess", "PortClaim", "PortInUse", "Stack", "StackConfig",
    "check_ports", "default_data_dir", "last_error", "node_args", "pick_ports", "port_claims", "port_holder",
    "port_is_free", "stack_secrets", "start_stack", "tail",
]

log = logging.getLogger(__name__)


@dataclass
class Stack:
    """A running stack; build it with :func:`start_stack`.

    The single-cluster attributes (:attr:`cluster_url`, :attr:`broker`, :attr:`mqtt_url`, the
    tokens, the MQTT identity) are cluster 1's; :attr:`clusters` has every cluster's.
    """

    config: StackConfig
    processes: list[ManagedProcess] = field(default_factory=list)
    started_clusters: list[ClusterInfo] = field(default_factory=list)  # as started, without node names
    node_clusters: dict[str, int] = field(default_factory=dict)  # node name -> its cluster's index
    mongo_url: str = ""  # the MongoDB server of the root and the clusters (see .stack_mongo)

    @property
    def root_url(self) -> str:
        return f"http://{self.config.host}:{self.config.root_port}"

    @property
    def cluster_url(self) -> str:
        return f"http://{self.config.host}:{self.config.cluster_port}"

    @property
    def clusters(self) -> list[ClusterInfo]:
        """Every cluster, cluster 1 first, each with the node engines the stack started in it."""
        names = self.node_names
        return [c.with_nodes(tuple(n for n in names if self.node_clusters.get(n) == c.index))
                for c in self.started_clusters]

    def cluster(self, ref: int | str = 1) -> ClusterInfo:
        """One cluster by index (1-based), name (``cluster-2``), process or broker name."""
        return find_cluster(self.clusters, ref)

    # The single-cluster API: cluster 1's (blank before the stack has started one).
    broker = FirstCluster[BrokerProcess | None]("broker_handle")  # None with an external broker
    mqtt_url = FirstCluster[str]("mqtt_url")
    cluster_token = FirstCluster[str]("cluster_token")  # any cluster token may list the root's clusters
    join_token = FirstCluster[str]("join_token")
    mqtt_username = FirstCluster[str]("mqtt_username")  # "" when its broker enforces no identities
    mqtt_password = FirstCluster[str]("mqtt_password")

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
            # -P: not the current directory first on sys.path, so a stray checkout (or a folder
            # named like a package) where `treeline up` is run cannot shadow the installed code
            [sys.executable, "-P", "-m", *args],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=die_with_parent,
            # its own session: a terminal's Ctrl-C (SIGINT to the foreground group) reaches only
            # `treeline up`, which stops the children in order (the store last); all at once, the
            # MongoDB server went first and the clusters hung on it for the stop timeout
            start_new_session=True,
            env={**os.environ, **env, INSTANCE_ID_ENV: instance_id},
        )
        log.info("started %s (pid %s, instance %s), log %s", name, process.pid, instance_id, log_path)
        return ManagedProcess(name, process, log_path, log_file, list(args), dict(env),
                              instance_id=instance_id, started_at=started_at)

    def process(self, name: str) -> ManagedProcess:
        """The child ``name``; ``cluster-1`` is cluster 1's process ``cluster`` (its name at the root)."""
        name = FIRST_CLUSTER_ALIASES.get(name, name)
        for managed in self.processes:
            if managed.name == name:
                return managed
        known = ", ".join(m.name for m in self.processes)
        raise KeyError(f"no process {name!r} in this stack (it has {known})")

    # ------------------------------------------------------------------ fault injection

    @property
    def node_names(self) -> list[str]:
        """Names of the node engines (``server-1``, ...), in start order, over every cluster."""
        return [m.name.removeprefix("node-") for m in self.processes if m.name.startswith("node-")]

    def node(self, name: str) -> ManagedProcess:
        """The node engine process of node ``name`` (``server-1``, not ``node-server-1``)."""
        return self.process(f"node-{name}")

    def _is_broker(self, name: str) -> bool:
        name = FIRST_CLUSTER_ALIASES.get(name, name)
        return any(c.broker == name for c in self.started_clusters)

    def kill(self, name: str) -> ManagedProcess | BrokerProcess:
        """SIGKILL the child ``name`` (``root``, ``cluster``, ``cluster-<i>``, ``node-<name>``, or a
        broker: ``broker``, ``broker-<i>``) and reap it."""
        if self._is_broker(name):
            return self.kill_broker(name)
        managed = self.process(name)
        managed.kill()
        log.info("killed %s (pid %s)", name, managed.pid)
        return managed

    def freeze(self, name: str) -> ManagedProcess | BrokerProcess:
        """SIGSTOP the child ``name`` (a broker too): it keeps its sockets and answers nothing."""
        target = self._own_broker(name) if self._is_broker(name) else self.process(name)
        target.freeze()
        log.info("froze %s (pid %s)", name, target.process.pid)
        return target

    def thaw(self, name: str) -> ManagedProcess | BrokerProcess:
        target = self._own_broker(name) if self._is_broker(name) else self.process(name)
        target.thaw()
        return target

    def restart(self, name: str, *, graceful: bool = False) -> ManagedProcess | BrokerProcess:
        """Start child ``name`` again with its own command line (same data dir and ports).

        A live process is first killed (SIGKILL), or stopped with SIGTERM when ``graceful``.
        The new process replaces the old in :attr:`processes`; its log is appended to. A broker
        name restarts that broker on its own port (:meth:`restart_broker`).
        Call it from a thread that outlives the child (the main thread): the parent-death
        signal fires when the *thread* that started a child exits.
        """
        if self._is_broker(name):
            return self.restart_broker(name)
        index, old = next((i, m) for i, m in enumerate(self.processes) if m.name == name)
        if graceful:
            old.terminate()
        else:
            old.kill()
        old.log_file.close()
        managed = self._launch(name, old.args, old.env)
        self.processes[index] = managed
        return managed

    def add_node(self, profile: str, name: str | None = None, labels: str = "",
                 cluster: int | str = 1) -> ManagedProcess:
        """Start one more node engine, joining ``cluster`` (index, name or process name; cluster 1
        by default). Its name must be new to the whole stack."""
        get_profile(profile)
        target = self.cluster(cluster)
        if name is None:
            taken = set(self.node_names)
            name = next(f"{profile}-{i}" for i in range(1, len(taken) + 2) if f"{profile}-{i}" not in taken)
        managed = self.spawn(f"node-{name}", node_args(self.config, target.url, profile, name, labels),
                             env=self.node_env(target.index))
        self.node_clusters[name] = target.index
        return managed

    def node_env(self, cluster: int | str = 1) -> dict[str, str]:
        """The environment a node engine of ``cluster`` gets (that cluster's join token)."""
        token = self.cluster(cluster).join_token if self.started_clusters else ""
        return {JOIN_TOKEN_ENV: token} if token else {}

    def kill_broker(self, cluster: int | str = 1) -> BrokerProcess:
        """SIGKILL the broker this stack started for ``cluster`` (index, cluster or broker name;
        cluster 1 by default). An external broker cannot be touched."""
        broker = self._own_broker(cluster)
        broker.kill()
        log.info("killed the broker of %s (pid %s)", self.cluster(cluster).name, broker.process.pid)
        return broker

    def restart_broker(self, cluster: int | str = 1) -> BrokerProcess:
        """Start ``cluster``'s broker again on the same port (after :meth:`kill_broker`)."""
        broker = self._own_broker(cluster)
        broker.restart()
        return broker

    def _own_broker(self, cluster: int | str = 1) -> BrokerProcess:
        broker = self.cluster(cluster).broker_handle
        if broker is None:
            raise RuntimeError("this stack uses an external broker; it did not start one")
        return broker

    def check_alive(self) -> None:
        """Raise if any child has exited: the first line names it with the last ERROR its log
        holds (why it stopped, e.g. a port or a node name taken), the tail of its log follows."""
        for managed in self.processes:
            if not managed.alive():
                reason = last_error(managed.log_path)
                raise RuntimeError(f"{managed.name} exited with {managed.process.returncode}"
                                   f"{f' ({reason})' if reason else ''}:\n{tail(managed.log_path)}")

    def stop(self, timeout: float = 8.0) -> None:
        """Stop orchestrators first, then nodes, then the MongoDB server the stack started, then the
        brokers; SIGKILL stragglers. Idempotent.

        Orchestrators go first so that nodes leaving at shutdown are not mistaken for node
        failures (which would re-plan, then fail, every deployment on the way down).
        """
        nodes = [m for m in self.processes if m.name.startswith("node-")]
        store = [m for m in self.processes if m.name == MONGO_PROCESS]  # last: the others write to it
        orchestrators = [m for m in self.processes if m not in nodes and m not in store]
        for group in (orchestrators, nodes, store):
            for managed in group:
                managed.request_stop()
            for managed in group:
                managed.wait_or_kill(timeout)
                managed.log_file.close()
        for cluster in self.started_clusters:
            if cluster.broker_handle is not None:
                cluster.broker_handle.stop()
        remove_stack_file(self.config.data_dir)

    # ------------------------------------------------------------------ waiting (see .stack_ready)

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Wait until our root and every cluster of ours answer, every cluster is registered and
        active at the root, and every node is online in its own cluster (:func:`.stack_ready.wait_ready`);
        then record where the stack listens (:func:`.stack_config.write_stack_file`), so commands run
        with the same data dir find it on any ports."""
        wait_ready(self, timeout)
        write_stack_file(self.config.data_dir, self.root_url, self.cluster_url)

    def wait_answering(self, name: str, url: str, timeout: float = 60.0) -> None:
        """Wait until ``url``'s ``GET /api/health`` answers with child ``name``'s instance id."""
        wait_answering(self, name, url, timeout)


def start_stack(config: StackConfig, timeout: float = 60.0) -> Stack:
    """Start the brokers, the root, the clusters and the nodes; on any failure stop what was started.

    Checks the layout and every port first (:func:`check_ports`). The clusters start once the
    root answers as our root, the nodes once their cluster answers as ours (``timeout`` bounds
    each wait), so no child retries a connection at a normal start; :meth:`Stack.wait_ready`
    then waits for registration and the nodes.
    """
    config.validate()
    for profile in config.profiles:
        get_profile(profile)  # unknown names fail before anything starts
    check_ports(config)
    config.data_dir.mkdir(parents=True, exist_ok=True)
    stack = Stack(config)
    try:
        mongo = stack.mongo_url = start_store(stack, timeout)
        commands: list[tuple[list[str], dict[str, str]]] = []
        secrets = cluster_secrets(config.data_dir, config.clusters)
        for index, (cluster_token, join_token) in enumerate(secrets, start=1):
            cluster, mqtt, env = start_cluster_broker(config, index, cluster_token, join_token)
            stack.started_clusters.append(cluster)
            commands.append((cluster_command(config, cluster, stack.root_url, mqtt,
                                             cluster_store_url(mongo, index)), env))
        stack.spawn(
            "root",
            ["root_orchestrator", "--host", config.host, "--port", str(config.root_port),
             "--public-url", stack.root_url, "--data-dir", str(config.data_dir / "root"),
             "--store-url", root_store_url(mongo),
             "--log-level", config.log_level, *config.root_args],
            env={CLUSTER_TOKEN_ENV: ",".join(token for token, _ in secrets)},
        )
        stack.wait_answering("root", stack.root_url, timeout)
        for cluster, (args, env) in zip(stack.started_clusters, commands, strict=True):
            stack.spawn(cluster.process, args, env=env)
        for cluster in stack.started_clusters:
            stack.wait_answering(cluster.process, cluster.url, timeout)
        for index, profile, name in node_plan(config):
            stack.add_node(profile, name, config.node_labels.get(name, ""), cluster=index)
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
