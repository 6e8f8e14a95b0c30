"""``python -m cluster_orchestrator``: run one cluster orchestrator until SIGTERM/SIGINT.

Defaults come from the settings every Treeline process shares (:mod:`treeline_common.config`:
``TREELINE_*`` environment, then ``treeline.toml``): ``--port`` is ``cluster_port``,
``--root-url`` is ``root_url``, ``--mqtt-url`` is ``broker_url`` (else mqtt://127.0.0.1:1883),
``--data-dir`` is ``<data_dir>/cluster``, ``--public-url`` is ``cluster_url`` when one is set,
``--log-level`` is ``log_level``. Flags win. ``--instance-id`` (default ``$TREELINE_INSTANCE_ID``,
else a new uuid) is what ``GET /api/health`` reports, so ``treeline up`` can tell its own cluster
from another stack's on the same port. Logs go to stderr as plain lines.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import sys
import uuid
from pathlib import Path

import cluster_orchestrator.app as cluster_app
from cluster_orchestrator.api import create_app
from cluster_orchestrator.app import ClusterRuntime, build_config
from cluster_orchestrator.root_client import ROOT_TOKEN_ENV
from treeline_common.config import (
    INSTANCE_ID_ENV,
    ConfigError,
    Settings,
    add_config_argument,
    process_settings,
)
from treeline_common.logs import LOG_LEVELS, setup_logging
from treeline_common.shutdown import ShutdownSignal

log = logging.getLogger("cluster_orchestrator")

DEFAULT_MQTT_URL = "mqtt://127.0.0.1:1883"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m cluster_orchestrator", description=__doc__)
    try:
        settings = process_settings(argv)
    except ConfigError as exc:
        p.error(str(exc))
    add_config_argument(p)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=settings.cluster_port,
                   help=f"default: cluster_port ({settings.cluster_port})")
    p.add_argument("--root-url", default=settings.root_url, help=f"default: root_url ({settings.root_url})")
    p.add_argument("--mqtt-url", default=settings.broker_url or DEFAULT_MQTT_URL,
                   help=f"default: broker_url, else {DEFAULT_MQTT_URL}")
    p.add_argument("--data-dir", type=Path, default=settings.data_dir / "cluster",
                   help=f"default: <data_dir>/cluster ({settings.data_dir / 'cluster'})")
    p.add_argument("--name", default="cluster-1")
    p.add_argument("--location", default="")
    p.add_argument("--public-url", default=_explicit_cluster_url(settings),
                   help="URL the root uses to reach this cluster (default: cluster_url when set, "
                        "else http://<host>:<port>)")
    p.add_argument("--push-interval", type=float, default=15.0)
    p.add_argument("--telemetry-interval", type=float, default=2.0)
    p.add_argument("--heartbeat-misses", type=int, default=3)
    p.add_argument("--stage-timeout", type=float, default=60.0)
    p.add_argument("--profile-timeout", type=float, default=30.0,
                   help="seconds to wait for nodes to profile a new model (then: regression estimates)")
    p.add_argument("--root-token", default=None, metavar="TOKEN",
                   help=f"cluster token for the root (default ${ROOT_TOKEN_ENV}); without one only a "
                        "development-mode root on loopback answers")
    p.add_argument("--instance-id", default=os.environ.get(INSTANCE_ID_ENV) or str(uuid.uuid4()),
                   help=f"what GET /api/health reports as instance_id [env {INSTANCE_ID_ENV}; "
                        "default: a new uuid]")
    p.add_argument("--log-level", default=settings.log_level, type=str.upper, choices=LOG_LEVELS)
    return p.parse_args(argv)


def _explicit_cluster_url(settings: Settings) -> str | None:
    """``cluster_url`` when the environment or a file sets it (its default is a guess from cluster_port)."""
    return settings.cluster_url if not settings.sources["cluster_url"].startswith("default") else None


def _report_instance_id(instance_id: str) -> None:
    """Make the app :class:`ClusterRuntime` builds report ``instance_id`` in ``GET /api/health``.

    ``ClusterRuntime.start`` calls ``create_app(core)`` itself and takes no instance id yet, so the
    factory it calls is bound to ours here, once, before it starts (this process runs one runtime).
    """
    cluster_app.create_app = functools.partial(create_app, instance_id=instance_id)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(args.log_level)
    config = build_config(
        args.name, args.root_url, args.mqtt_url, args.public_url or f"http://{args.host}:{args.port}",
        location=args.location, push_interval=args.push_interval, telemetry_interval=args.telemetry_interval,
        heartbeat_misses=args.heartbeat_misses, stage_timeout=args.stage_timeout,
        profile_timeout=args.profile_timeout)
    _report_instance_id(args.instance_id)
    runtime = ClusterRuntime(config, args.data_dir, args.host, args.port, args.mqtt_url)
    if args.root_token:
        runtime.root.set_token(args.root_token)  # else the client read $TREELINE_ROOT_TOKEN itself
    shutdown = ShutdownSignal()
    try:
        runtime.start()
    except OSError as exc:  # the port is taken: one clear line, not a traceback
        log.error("cannot listen on %s:%s: %s", args.host, args.port, exc.strerror or exc)
        runtime.store.close()
        return 1
    log.info("cluster %s: instance %s", args.name, args.instance_id)
    try:
        shutdown.wait()
        log.info("signal %s: shutting down", shutdown.received)
    finally:
        runtime.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
