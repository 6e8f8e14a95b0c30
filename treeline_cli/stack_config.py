"""What a stack is made of and where it listens (:class:`StackConfig`), and its defaults.

Several clusters (``clusters > 1``): cluster ``i`` (1-based) listens on ``cluster_port + i - 1``
unless :attr:`StackConfig.more_cluster_ports` names the ports of clusters 2..N (tests take free
ones with :func:`pick_ports`), and its own broker on ``broker_port + i - 1`` when ``broker_port`` is
fixed (else a free port each). Nodes: ``nodes`` in every cluster, or ``nodes_per_cluster`` (one
count per cluster). Node profiles cycle over the nodes in start order across the clusters, so
``--nodes 2,1 --profiles server,server,rpi4`` puts two servers in cluster 1 and the rpi4 in
cluster 2.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from treeline_common.mqtt_acl import TlsFiles
from treeline_common.netutil import free_port
from treeline_common.profiles import DEFAULT_DEMO_PROFILES


@dataclass
class StackConfig:
    data_dir: Path
    nodes: int = 3  # node engines in each cluster (unless nodes_per_cluster)
    profiles: tuple[str, ...] = DEFAULT_DEMO_PROFILES
    mqtt_url: str | None = None  # external broker; None = start one per cluster
    broker_kind: str = "auto"
    host: str = "127.0.0.1"
    root_port: int = 10000
    cluster_port: int = 10100  # cluster 1's
    broker_port: int = 0  # the broker the stack starts for cluster 1; 0: a free one
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
    # MQTT identities and ACL on the broker the stack starts (Mosquitto only; see treeline_cli.stack)
    mqtt_auth: bool = True
    # MQTT over TLS on the broker the stack starts: its cert/key, and the CA the clients verify it with
    mqtt_tls: TlsFiles | None = None
    clusters: int = 1  # cluster orchestrators, each with its own broker
    nodes_per_cluster: tuple[int, ...] = ()  # one count per cluster; () = `nodes` in each
    more_cluster_ports: tuple[int, ...] = ()  # ports of clusters 2..N; () = after cluster_port
    # The store of the root and the clusters (see treeline_cli.stack_mongo): an external MongoDB,
    # or None: the stack starts the embedded MongoDB wire server, on mongo_port (0: a free one).
    mongo_url: str | None = None
    mongo_port: int = 0

    def node_profile(self, index: int) -> str:
        return self.profiles[index % len(self.profiles)]

    def validate(self) -> None:
        """Raise ValueError naming the setting when the cluster layout does not add up."""
        if self.clusters < 1:
            raise ValueError(f"clusters must be at least 1, not {self.clusters}")
        if self.nodes_per_cluster and len(self.nodes_per_cluster) != self.clusters:
            raise ValueError(f"nodes lists {len(self.nodes_per_cluster)} counts for {self.clusters} "
                             f"cluster{'s' if self.clusters != 1 else ''}")
        if any(n < 0 for n in self.node_counts()):
            raise ValueError("node counts must not be negative")
        if self.more_cluster_ports and len(self.more_cluster_ports) != self.clusters - 1:
            raise ValueError(f"more_cluster_ports needs {self.clusters - 1} ports, "
                             f"not {len(self.more_cluster_ports)}")
        for what, ports in (("cluster_port", self.cluster_ports()), ("broker_port", self.broker_ports()),
                            ("root_port", (self.root_port,))):
            if any(not 0 <= port <= 65535 for port in ports):
                raise ValueError(f"{what} {ports[0]} leaves no room for {self.clusters} clusters "
                                 f"(ports end at 65535)" if what != "root_port" else
                                 f"root_port must be 0..65535, not {self.root_port}")
        if self.mqtt_url and self.clusters > 1:
            raise ValueError("mqtt_url names one broker, and every cluster needs its own: "
                             "leave it unset so that the stack starts one per cluster")

    def node_counts(self) -> tuple[int, ...]:
        """How many node engines each cluster gets, cluster 1 first."""
        return self.nodes_per_cluster or (self.nodes,) * self.clusters

    @property
    def total_nodes(self) -> int:
        return sum(self.node_counts())

    def cluster_ports(self) -> tuple[int, ...]:
        """The port of each cluster orchestrator, cluster 1 first."""
        if self.more_cluster_ports:
            return (self.cluster_port, *self.more_cluster_ports)
        return tuple(self.cluster_port + i for i in range(self.clusters))

    def broker_ports(self) -> tuple[int, ...]:
        """The port of each cluster's broker; 0 where a free one is taken at start."""
        return tuple(self.broker_port + i if self.broker_port else 0 for i in range(self.clusters))


def pick_ports(config: StackConfig) -> StackConfig:
    """Replace the default ports by free ones (tests run stacks side by side)."""
    config.root_port = free_port()
    config.cluster_port = free_port()
    config.more_cluster_ports = tuple(free_port() for _ in range(config.clusters - 1))
    return config


def default_data_dir() -> Path:
    return Path(os.environ.get("TREELINE_DATA_DIR", Path.cwd() / ".treeline"))


STACK_FILE = "stack.json"  # <data_dir>/stack.json: where a running `treeline up` listens


def write_stack_file(data_dir: Path, root_url: str, cluster_url: str) -> None:
    """Record a running stack's addresses (and the pid of the process that runs it)."""
    (Path(data_dir) / STACK_FILE).write_text(json.dumps(
        {"root_url": root_url, "cluster_url": cluster_url, "pid": os.getpid()}))


def remove_stack_file(data_dir: Path) -> None:
    (Path(data_dir) / STACK_FILE).unlink(missing_ok=True)


def running_stack_urls(data_dir: Path) -> dict[str, str] | None:
    """The addresses of the stack running on ``data_dir`` (its process alive), else None."""
    try:
        doc = json.loads((Path(data_dir) / STACK_FILE).read_text())
        os.kill(int(doc["pid"]), 0)  # raises when the process is gone
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return {k: str(v) for k, v in doc.items() if k.endswith("_url")}
