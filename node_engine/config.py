"""Command line of the node engine, parsed into one frozen :class:`NodeConfig`.

Parsing is separate from the daemon so the configuration can be built in tests without a
command line, and so unknown profiles fail at start-up with the list of known ones.

Defaults come from the settings every Treeline process shares (:mod:`treeline_common.config`:
``TREELINE_*`` environment, then ``treeline.toml``): ``--cluster-url`` is ``cluster_url``,
``--data-dir`` is ``<data_dir>/nodes/<name>``, ``--threads`` is ``threads``, ``--log-level`` is
``log_level``. Flags win; an invalid setting exits with status 2 before anything starts.

Security: ``--join-token`` (default ``$TREELINE_JOIN_TOKEN``) is shown to the cluster at
registration; the MQTT username and password come in the cluster's answer. ``--mqtt-tls``
(or the cluster's answer saying ``mqtt_tls``) connects to the broker over TLS, verified against
``--mqtt-ca`` (default: the system's CAs), with ``--mqtt-cert``/``--mqtt-key`` for mutual TLS.

``--memory-limit-mb`` caps the memory the node offers below its profile's (and the host's): the
node reports it in telemetry and refuses a partition that does not fit in it
(:mod:`node_engine.commands`).

``--v2-port`` (default ``$TREELINE_NODE_V2_PORT``, else off; 0: a free port) serves the Open
Inference Protocol for the deployments whose entry is on this node (:mod:`node_engine.v2_http`).
``--metrics-port`` (default ``$TREELINE_NODE_METRICS_PORT``, else off; 0: a free port) serves
Prometheus ``/metrics`` (:mod:`node_engine.metrics`).
``--battery-wh`` (default ``$TREELINE_NODE_BATTERY_WH``, else the profile's ``battery_wh``) sets
the capacity of an emulated profile's battery (:mod:`node_engine.sources.battery_emulated`).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from treeline_common.config import ConfigError, Settings, add_config_argument, process_settings
from treeline_common.logs import LOG_LEVELS
from treeline_common.mqtt_acl import TlsFiles
from treeline_common.profiles import PROFILES, DeviceProfile, get_profile

JOIN_TOKEN_ENV = "TREELINE_JOIN_TOKEN"
V2_PORT_ENV = "TREELINE_NODE_V2_PORT"
METRICS_PORT_ENV = "TREELINE_NODE_METRICS_PORT"
BATTERY_WH_ENV = "TREELINE_NODE_BATTERY_WH"


@dataclass(frozen=True)
class NodeConfig:
    """Everything the daemon needs to start; ``data_dir=None`` means a private temp dir."""

    cluster_url: str
    profile: DeviceProfile
    name: str
    host: str = "127.0.0.1"
    data_port: int = 0
    telemetry_interval: float | None = None  # None: the cluster's answer, else 2.0 s
    link_probe_interval: float = 60.0  # s between link probes of each peer (node_engine.links)
    data_dir: str | None = None
    threads: int = 0
    log_level: str = "INFO"
    labels: tuple[str, ...] = ()  # this node's own labels, added to its profile's (e.g. "camera")
    join_token: str | None = field(default=None, repr=False)  # shown to the cluster at registration
    mqtt_tls: bool = False  # TLS to the broker even if the cluster's answer does not ask for it
    mqtt_tls_files: TlsFiles = field(default_factory=TlsFiles)  # CA / client cert / key (empty: defaults)
    v2_port: int | None = None  # KServe v2 REST of the entries here (node_engine.v2_http); None: off, 0: free
    metrics_port: int | None = None  # Prometheus /metrics (node_engine.metrics); None: off, 0: a free port


def build_parser(settings: Settings, prog: str = "python -m node_engine") -> argparse.ArgumentParser:
    """The command line, with defaults from ``settings`` (see the module docstring)."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Treeline node engine: serves model partitions on this (emulated) device.",
    )
    add_config_argument(parser)
    parser.add_argument("--cluster-url", default=settings.cluster_url,
                        help=f"base URL of the cluster orchestrator (default: cluster_url, "
                             f"{settings.cluster_url})")
    parser.add_argument("--profile", default="native", choices=sorted(PROFILES),
                        help="device emulation profile (native = this host as it is)")
    parser.add_argument("--name", default=socket.gethostname(), help="node name (unique in the cluster)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind and advertise the data plane on")
    parser.add_argument("--data-port", type=int, default=0, help="data plane port (0: pick a free one)")
    parser.add_argument("--telemetry-interval", type=float, default=None,
                        help="seconds between telemetry messages (default: the cluster's, else 2.0)")
    parser.add_argument("--link-probe-interval", type=float, default=60.0,
                        help="seconds between link probes of each node this one sends tensors to "
                             "(default 60; a new peer is probed at once)")
    parser.add_argument("--data-dir", default=None,
                        help=f"directory for downloaded partitions and the node's keys "
                             f"(default: <data_dir>/nodes/<name>, under {settings.data_dir})")
    parser.add_argument("--memory-limit-mb", type=int, default=None, metavar="MB",
                        help="memory this node offers to partitions "
                             "(default: the profile's, else the host's)")
    parser.add_argument("--threads", type=int, default=settings.threads,
                        help="onnxruntime intra-op threads (0: ORT default; default: threads)")
    parser.add_argument("--log-level", default=settings.log_level, type=str.upper, choices=LOG_LEVELS,
                        help="logging level (default: log_level)")
    parser.add_argument("--labels", default="",
                        help="comma-separated labels of this node, added to its profile's (SLA constraints "
                             "such as privacy_pin and source may name them)")
    parser.add_argument("--join-token", default=os.environ.get(JOIN_TOKEN_ENV) or None, metavar="TOKEN",
                        help=f"the cluster's join token (default ${JOIN_TOKEN_ENV})")
    parser.add_argument("--mqtt-tls", action="store_true",
                        help="connect to the broker over TLS (also when the cluster's answer says so)")
    parser.add_argument("--mqtt-ca", default="", help="CA file verifying the broker (default: the system's)")
    parser.add_argument("--mqtt-cert", default="", help="client certificate for mutual TLS")
    parser.add_argument("--mqtt-key", default="", help="client key for mutual TLS")
    parser.add_argument("--v2-port", type=int, default=None, metavar="PORT",
                        help=f"serve the Open Inference Protocol (KServe v2 REST) for the deployments "
                             f"whose entry is here on PORT (0: a free one; default ${V2_PORT_ENV}, else off)")
    parser.add_argument("--metrics-port", type=int, default=None, metavar="PORT",
                        help=f"serve Prometheus /metrics on PORT (0: a free one; "
                             f"default ${METRICS_PORT_ENV}, else off)")
    parser.add_argument("--battery-wh", type=float, default=None, metavar="WH",
                        help=f"capacity of the emulated battery of a profile that declares one "
                             f"(default ${BATTERY_WH_ENV}, else the profile's)")
    return parser


def _battery_wh(parser: argparse.ArgumentParser, value: float | None) -> float | None:
    """``--battery-wh``, else ``$TREELINE_NODE_BATTERY_WH``; None: the profile's. Exits naming the
    flag or the variable when it is not a positive number."""
    source = "--battery-wh"
    if value is None and os.environ.get(BATTERY_WH_ENV, "").strip():
        source = BATTERY_WH_ENV
        try:
            value = float(os.environ[BATTERY_WH_ENV])
        except ValueError:
            parser.error(f"{BATTERY_WH_ENV} must be a number of Wh, not {os.environ[BATTERY_WH_ENV]!r}")
    if value is not None and not 0.0 < value < float("inf"):
        parser.error(f"{source} must be a positive number of Wh, not {value}")
    return value


def _port_option(parser: argparse.ArgumentParser, value: int | None, env: str, flag: str) -> int | None:
    """``value`` (the flag), else ``$env`` when set; None: off. Exits (status 2) naming the flag or
    the variable when it is not a port number."""
    if value is None and os.environ.get(env, "").strip():
        try:
            value = int(os.environ[env])
        except ValueError:
            parser.error(f"{env} must be a port number, not {os.environ[env]!r}")
    if value is not None and not 0 <= value <= 65535:
        parser.error(f"{flag} must be between 0 and 65535, not {value}")
    return value


def parse_args(argv: Sequence[str] | None = None, prog: str = "python -m node_engine") -> NodeConfig:
    """Parse ``argv`` (default ``sys.argv[1:]``); exits with status 2 on a bad command line or
    an invalid setting in the environment or the config file."""
    try:
        settings = process_settings(argv)
    except ConfigError as exc:
        argparse.ArgumentParser(prog=prog).error(str(exc))
    parser = build_parser(settings, prog)
    args = parser.parse_args(argv)
    if args.telemetry_interval is not None and args.telemetry_interval <= 0:
        parser.error("--telemetry-interval must be positive")
    if args.link_probe_interval <= 0:
        parser.error("--link-probe-interval must be positive")
    if args.threads < 0:
        parser.error("--threads must be >= 0")
    v2_port = _port_option(parser, args.v2_port, V2_PORT_ENV, "--v2-port")
    metrics_port = _port_option(parser, args.metrics_port, METRICS_PORT_ENV, "--metrics-port")
    profile = get_profile(args.profile)
    if args.memory_limit_mb is not None:
        if args.memory_limit_mb <= 0:
            parser.error("--memory-limit-mb must be positive")
        cap = min(args.memory_limit_mb, profile.memory_limit_mb or args.memory_limit_mb)
        profile = dataclasses.replace(profile, memory_limit_mb=cap)
    battery_wh = _battery_wh(parser, args.battery_wh)
    if battery_wh is not None and profile.battery is not None:
        profile = dataclasses.replace(profile, battery_wh=battery_wh)
    return NodeConfig(
        cluster_url=args.cluster_url.rstrip("/"),
        profile=profile,
        name=args.name,
        host=args.host,
        data_port=args.data_port,
        telemetry_interval=args.telemetry_interval,
        link_probe_interval=args.link_probe_interval,
        data_dir=args.data_dir or str(Path(settings.data_dir) / "nodes" / args.name),
        threads=args.threads,
        log_level=args.log_level.upper(),
        labels=tuple(label.strip() for label in args.labels.split(",") if label.strip()),
        join_token=(args.join_token or "").strip() or None,
        mqtt_tls=args.mqtt_tls,
        mqtt_tls_files=TlsFiles(args.mqtt_ca, args.mqtt_cert, args.mqtt_key),
        v2_port=v2_port,
        metrics_port=metrics_port,
    )
