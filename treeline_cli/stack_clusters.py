"""The clusters of a stack: each cluster orchestrator with its own broker, secrets and nodes.

A stack has ``config.clusters`` clusters (one unless asked). Cluster ``i`` (1-based) is

- registered at the root as ``cluster-<i>``, with its own cluster token (see :mod:`.stack_secrets`);
- the child process ``cluster`` for ``i == 1`` (the name a one-cluster stack always had) and
  ``cluster-<i>`` after, with its state in ``<data_dir>/cluster`` or ``<data_dir>/cluster-<i>``;
- served by its own broker, ``broker`` / ``broker-<i>``, working in ``<data_dir>/broker`` /
  ``<data_dir>/broker-<i>`` with its own password and ACL files and its own cluster password
  (unless the stack uses one external broker, which only a one-cluster stack may);
- joined by its own node engines with its own join token.

:class:`ClusterInfo` is what callers see of one cluster: a frozen record, rebuilt on every read
of :attr:`Stack.clusters <treeline_cli.stack.Stack.clusters>` so its node names are current.
The functions here start a cluster's broker and build a cluster's command line; the
:class:`~treeline_cli.stack.Stack` owns the processes.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar, cast

from cluster_orchestrator.nodes import JOIN_TOKEN_ENV
from cluster_orchestrator.root_client import ROOT_TOKEN_ENV
from treeline_cli.broker import BrokerProcess, mosquitto_binary, start_broker
from treeline_cli.stack_checks import numbered
from treeline_cli.stack_config import StackConfig
from treeline_common.mqtt_acl import CLUSTER_USER, PASSWORD_ENV, BrokerAuth, new_password

T = TypeVar("T")


@dataclass(frozen=True)
class ClusterInfo:
    """One cluster of a running stack (see the module docstring for the naming).

    ``broker_handle`` is None when the stack uses an external broker (``broker_port`` is then 0).
    ``node_names`` are the node engines the stack started in this cluster, in start order.
    """

    index: int  # 1-based
    name: str  # cluster-<index>, its name at the root
    url: str
    process: str  # cluster | cluster-<index>
    broker: str  # broker | broker-<index>
    broker_port: int
    mqtt_url: str
    node_names: tuple[str, ...] = ()
    cluster_token: str = field(default="", repr=False)  # its credential at the root (and the root's at it)
    join_token: str = field(default="", repr=False)  # its node engines register with it
    mqtt_username: str = ""  # its MQTT identity when its broker enforces identities
    mqtt_password: str = field(default="", repr=False)
    broker_handle: BrokerProcess | None = field(default=None, repr=False, compare=False)

    @property
    def dir_name(self) -> str:
        """Its folder under the stack's data directory (``cluster``, ``cluster-2``)."""
        return self.process

    def with_nodes(self, names: tuple[str, ...]) -> ClusterInfo:
        return dataclasses.replace(self, node_names=names)


NO_CLUSTER = ClusterInfo(index=1, name="", url="", process="cluster", broker="broker", broker_port=0,
                         mqtt_url="")


class FirstCluster(Generic[T]):
    """A read-only attribute of a stack that is cluster 1's field ``field_name``: how the Stack API
    of a one-cluster stack (``stack.broker``, ``stack.join_token``, ...) keeps its meaning."""

    def __init__(self, field_name: str) -> None:
        self.field_name = field_name

    def __get__(self, stack: Any, owner: Any = None) -> T:
        clusters = getattr(stack, "started_clusters", None) or [NO_CLUSTER]
        return cast(T, getattr(clusters[0], self.field_name))


def cluster_name(index: int) -> str:
    return f"cluster-{index}"


# cluster 1's processes keep a one-cluster stack's names; its name at the root is cluster-1
FIRST_CLUSTER_ALIASES = {"cluster-1": "cluster", "broker-1": "broker"}


def find_cluster(clusters: list[ClusterInfo], ref: int | str) -> ClusterInfo:
    """The cluster ``ref`` names: its index (1-based), its name (``cluster-2``), its process name
    (``cluster``, ``cluster-2``) or its broker's name (``broker``, ``broker-2``). KeyError otherwise."""
    for cluster in clusters:
        names = (cluster.name, cluster.process, cluster.broker, f"broker-{cluster.index}")
        if (ref == cluster.index) if isinstance(ref, int) else (ref in names):
            return cluster
    known = ", ".join(c.name for c in clusters)
    raise KeyError(f"no cluster {ref!r} in this stack (it has {known})")


def start_cluster_broker(config: StackConfig, index: int, cluster_token: str,
                         join_token: str) -> tuple[ClusterInfo, list[str], dict[str, str]]:
    """Start cluster ``index``'s own broker (or take the external one) and say how the cluster
    reaches it: ``(its record, its MQTT arguments, its environment)``.

    With ``mqtt_auth`` on Mosquitto, the broker refuses anonymous clients: the password and ACL
    files go into the broker's own directory, with a fresh password for this cluster alone.
    """
    process = numbered("cluster", index)
    host_port = config.cluster_ports()[index - 1]
    env = {ROOT_TOKEN_ENV: cluster_token, JOIN_TOKEN_ENV: join_token}
    record = ClusterInfo(index=index, name=cluster_name(index), url=f"http://{config.host}:{host_port}",
                         process=process, broker=numbered("broker", index), broker_port=0,
                         mqtt_url=config.mqtt_url or "", cluster_token=cluster_token, join_token=join_token)
    if config.mqtt_url:
        return record, [], env
    workdir = config.data_dir / numbered("broker", index)
    mqtt: list[str] = []
    auth, username, password = None, "", ""
    if config.mqtt_auth and (config.broker_kind == "mosquitto"
                             or (config.broker_kind == "auto" and mosquitto_binary())):
        auth = BrokerAuth(workdir)
        username, password = CLUSTER_USER, new_password()
        auth.write(password)
        mqtt += ["--mqtt-auth-dir", str(workdir), "--mqtt-username", CLUSTER_USER]
        env[PASSWORD_ENV] = password
    broker = start_broker(config.broker_kind, port=config.broker_ports()[index - 1] or None,
                          workdir=workdir, auth=auth, tls=config.mqtt_tls)
    if config.mqtt_tls is not None:
        mqtt += ["--mqtt-tls", *(["--mqtt-ca", config.mqtt_tls.ca] if config.mqtt_tls.ca else [])]
    record = dataclasses.replace(record, broker_port=broker.port, mqtt_url=broker.url, mqtt_username=username,
                                 mqtt_password=password, broker_handle=broker)
    return record, mqtt, env


def cluster_command(config: StackConfig, cluster: ClusterInfo, root_url: str, mqtt: list[str],
                    store_url: str | None = None) -> list[str]:
    """The ``python -m cluster_orchestrator`` arguments of ``cluster`` (its state in ``store_url``,
    a MongoDB database; None: SQLite in its data dir)."""
    port = cluster.url.rsplit(":", 1)[1]
    store = ["--store-url", store_url] if store_url else []
    return ["cluster_orchestrator", "--host", config.host, "--port", port, "--public-url", cluster.url,
            *store, "--root-url", root_url, "--mqtt-url", cluster.mqtt_url,
            "--data-dir", str(config.data_dir / cluster.dir_name), "--name", cluster.name,
            "--push-interval", str(config.push_interval),
            "--telemetry-interval", str(config.telemetry_interval),
            "--heartbeat-misses", str(config.heartbeat_misses), *mqtt,
            "--log-level", config.log_level, *config.cluster_args]


def node_plan(config: StackConfig) -> list[tuple[int, str, str]]:
    """``(cluster index, profile, node name)`` of every node engine the stack starts, in order.

    Profiles cycle over the nodes across the clusters (node ``k`` of the whole stack gets
    ``config.node_profile(k)``); names count per profile over the whole stack (``server-1``,
    ``server-2``, ...), so they are unique across clusters, and a one-cluster stack names its
    nodes as it always did.
    """
    plan: list[tuple[int, str, str]] = []
    counts: dict[str, int] = {}
    for index, count in enumerate(config.node_counts(), start=1):
        for _ in range(count):
            profile = config.node_profile(len(plan))
            counts[profile] = counts.get(profile, 0) + 1
            plan.append((index, profile, f"{profile}-{counts[profile]}"))
    return plan
