"""What a stack is made of and where it listens (:class:`StackConfig`), and its defaults."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from treeline_common.mqtt_acl import TlsFiles
from treeline_common.netutil import free_port
from treeline_common.profiles import DEFAULT_DEMO_PROFILES


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
    # MQTT identities and ACL on the broker the stack starts (Mosquitto only; see treeline_cli.stack)
    mqtt_auth: bool = True
    # MQTT over TLS on the broker the stack starts: its cert/key, and the CA the clients verify it with
    mqtt_tls: TlsFiles | None = None

    def node_profile(self, index: int) -> str:
        return self.profiles[index % len(self.profiles)]


def pick_ports(config: StackConfig) -> StackConfig:
    """Replace the default ports by free ones (tests run stacks side by side)."""
    config.root_port = free_port()
    config.cluster_port = free_port()
    return config


def default_data_dir() -> Path:
    return Path(os.environ.get("TREELINE_DATA_DIR", Path.cwd() / ".treeline"))
