"""``python -m cluster_orchestrator``: run one cluster orchestrator until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import logging
import sys

from cluster_orchestrator.app import ClusterRuntime, build_config
from cluster_orchestrator.root_client import ROOT_TOKEN_ENV
from treeline_common.shutdown import ShutdownSignal

log = logging.getLogger("cluster_orchestrator")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m cluster_orchestrator", description=__doc__)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=10100)
    p.add_argument("--root-url", required=True)
    p.add_argument("--mqtt-url", default="mqtt://127.0.0.1:1883")
    p.add_argument("--data-dir", required=True)
    p.add_argument("--name", default="cluster-1")
    p.add_argument("--location", default="")
    p.add_argument("--public-url", default=None, help="URL the root uses to reach this cluster")
    p.add_argument("--push-interval", type=float, default=15.0)
    p.add_argument("--telemetry-interval", type=float, default=2.0)
    p.add_argument("--heartbeat-misses", type=int, default=3)
    p.add_argument("--stage-timeout", type=float, default=60.0)
    p.add_argument("--profile-timeout", type=float, default=30.0,
                   help="seconds to wait for nodes to profile a new model (then: regression estimates)")
    p.add_argument("--root-token", default=None, metavar="TOKEN",
                   help=f"cluster token for the root (default ${ROOT_TOKEN_ENV}); without one only a "
                        "development-mode root on loopback answers")
    p.add_argument("--log-level", default="INFO")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = build_config(
        args.name, args.root_url, args.mqtt_url, args.public_url or f"http://{args.host}:{args.port}",
        location=args.location, push_interval=args.push_interval, telemetry_interval=args.telemetry_interval,
        heartbeat_misses=args.heartbeat_misses, stage_timeout=args.stage_timeout,
        profile_timeout=args.profile_timeout)
    runtime = ClusterRuntime(config, args.data_dir, args.host, args.port, args.mqtt_url)
    if args.root_token:
        runtime.root.set_token(args.root_token)  # else the client read $TREELINE_ROOT_TOKEN itself
    shutdown = ShutdownSignal()
    runtime.start()
    try:
        shutdown.wait()
        log.info("signal %s: shutting down", shutdown.received)
    finally:
        runtime.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
