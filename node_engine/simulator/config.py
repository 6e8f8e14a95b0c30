"""Settings of a simulated fleet (:class:`FleetConfig`) and the command line that builds them."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

from node_engine.config import JOIN_TOKEN_ENV
from node_engine.simulator.transport import MODES, PER_NODE
from treeline_common.logs import LOG_LEVELS
from treeline_common.mqtt_acl import PASSWORD_ENV
from treeline_common.profiles import PROFILES, get_profile

DEFAULT_PROFILES = ("rpi4", "jetson-nano", "server")


@dataclass(frozen=True)
class FleetConfig:
    """What :class:`~node_engine.simulator.fleet.Fleet` starts (seconds unless named otherwise).

    ``mqtt_host``/``mqtt_port`` None: the broker the cluster names in its registration answer.
    ``telemetry_interval`` None: the cluster's answer, else 2 s; every node's period is the
    interval times ``1 ± jitter`` and the first message comes at a random phase, so a fleet's
    telemetry is spread over the interval instead of arriving in bursts.
    ``mqtt_username``/``mqtt_password`` are used by the multiplexed mode only (per-node sessions
    log in with each node's own credentials from its registration answer).
    """

    cluster_url: str
    nodes: int = 1000
    mode: str = PER_NODE
    profiles: tuple[str, ...] = DEFAULT_PROFILES
    mqtt_host: str | None = None
    mqtt_port: int | None = None
    join_token: str | None = field(default=None, repr=False)
    name_prefix: str = "sim"
    telemetry_interval: float | None = None
    jitter: float = 0.05
    register_workers: int = 16
    network_threads: int = 4
    connections: int = 4
    keepalive: int = 30
    mqtt_username: str | None = None
    mqtt_password: str | None = field(default=None, repr=False)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"unknown mode {self.mode!r}; known: {', '.join(MODES)}")
        if self.nodes < 0:
            raise ValueError("nodes must be >= 0")
        if not self.profiles:
            raise ValueError("at least one profile is needed")
        for name in self.profiles:
            get_profile(name)  # unknown names fail with the list of known ones
        if self.telemetry_interval is not None and self.telemetry_interval <= 0:
            raise ValueError("telemetry_interval must be positive")
        if not 0.0 <= self.jitter < 1.0:
            raise ValueError("jitter must be in [0, 1)")

    def profile_of(self, index: int) -> str:
        """Profiles are dealt round-robin: node ``index`` gets ``profiles[index % len(profiles)]``."""
        return self.profiles[index % len(self.profiles)]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m node_engine.simulator",
        description="Run many virtual node engines in one process against a real cluster orchestrator "
                    "and a real MQTT broker (real registration, payloads, births and last wills; "
                    "stages are held, not run).")
    parser.add_argument("--cluster-url", required=True, help="base URL of the cluster orchestrator")
    parser.add_argument("--mqtt-host", default=None, help="broker host (default: the cluster's answer)")
    parser.add_argument("--mqtt-port", type=int, default=None,
                        help="broker port (default: the cluster's answer)")
    parser.add_argument("--nodes", type=int, default=1000, help="virtual nodes (default 1000)")
    parser.add_argument("--mode", choices=MODES, default=PER_NODE,
                        help="per-node: one MQTT session and last will per node; multiplexed: a few "
                             "sessions for all nodes, no per-node will (default per-node)")
    parser.add_argument("--profiles", default=",".join(DEFAULT_PROFILES),
                        help=f"comma-separated device profiles dealt round-robin "
                             f"(known: {', '.join(PROFILES)})")
    parser.add_argument("--name-prefix", default="sim", help="node names are <prefix>-<profile>-<n>")
    parser.add_argument("--telemetry-interval", type=float, default=None,
                        help="seconds between telemetry messages per node (default: the cluster's, else 2)")
    parser.add_argument("--network-threads", type=int, default=4, help="threads driving the MQTT sessions")
    parser.add_argument("--connections", type=int, default=4, help="sessions in multiplexed mode")
    parser.add_argument("--join-token", default=os.environ.get(JOIN_TOKEN_ENV) or None, metavar="TOKEN",
                        help=f"the cluster's join token (default ${JOIN_TOKEN_ENV})")
    parser.add_argument("--mqtt-username", default=None,
                        help=f"multiplexed mode: an identity that may publish for every node (password in "
                             f"${PASSWORD_ENV})")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic telemetry and the jitter")
    parser.add_argument("--log-level", default="INFO", type=str.upper, choices=LOG_LEVELS)
    return parser


def parse_args(argv: Sequence[str] | None = None) -> tuple[FleetConfig, str]:
    """``(config, log level)``; exits with status 2 on a bad command line."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.nodes < 1:
        parser.error("--nodes must be at least 1")
    try:
        config = FleetConfig(
            cluster_url=args.cluster_url.rstrip("/"), nodes=args.nodes, mode=args.mode,
            profiles=tuple(p.strip() for p in args.profiles.split(",") if p.strip()),
            mqtt_host=args.mqtt_host, mqtt_port=args.mqtt_port, join_token=args.join_token,
            name_prefix=args.name_prefix, telemetry_interval=args.telemetry_interval,
            network_threads=args.network_threads, connections=args.connections,
            mqtt_username=args.mqtt_username, mqtt_password=os.environ.get(PASSWORD_ENV) or None,
            seed=args.seed)
    except ValueError as exc:
        parser.error(str(exc))
    return config, args.log_level
