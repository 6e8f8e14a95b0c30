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
import logging
import os
import sys
import uuid
from pathlib import Path

from cluster_orchestrator.app import ClusterRuntime, ClusterSecurity, build_config
from cluster_orchestrator.nodes import JOIN_TOKEN_ENV, MIN_JOIN_TOKEN_CHARS
from cluster_orchestrator.root_client import ROOT_TOKEN_ENV
from treeline_common.config import (
    INSTANCE_ID_ENV,
    ConfigError,
    Settings,
    add_config_argument,
    process_settings,
)
from treeline_common.logs import LOG_LEVELS, setup_logging
from treeline_common.mqtt_acl import CLUSTER_USER, PASSWORD_ENV, TlsFiles
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
    p.add_argument("--store-url", default=None, metavar="URL",
                   help="the cluster's state: mongodb://host:port/<database> (what `treeline up` passes: "
                        "its MongoDB, one database per cluster); "
                        "default: an embedded MongoDB wire server it starts, data in <data-dir>/mongo")
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
    p.add_argument("--production", action="store_true",
                   default=os.environ.get("TREELINE_PRODUCTION", "").lower() in ("1", "true", "yes"),
                   help="serve under waitress, a production WSGI server [env TREELINE_PRODUCTION]")
    p.add_argument("--join-token", default=os.environ.get(JOIN_TOKEN_ENV) or None, metavar="TOKEN",
                   help=f"the initial join token node engines register with [env {JOIN_TOKEN_ENV}; default: "
                        "one made at the first start, logged once]")
    p.add_argument("--mqtt-username", default=None,
                   help=f"this cluster's MQTT user (password in ${PASSWORD_ENV}); default {CLUSTER_USER} "
                        "with --mqtt-auth-dir, else none")
    p.add_argument("--mqtt-auth-dir", type=Path, default=None,
                   help="the broker's password/ACL/pid files: this cluster adds each node's credentials "
                        "and signals the broker to reload (Mosquitto)")
    p.add_argument("--mqtt-tls", action="store_true", help="connect to the broker over TLS")
    p.add_argument("--mqtt-ca", default="", help="CA file verifying the broker (default: the system's)")
    p.add_argument("--mqtt-cert", default="", help="client certificate for mutual TLS")
    p.add_argument("--mqtt-key", default="", help="client key for mutual TLS")
    p.add_argument("--instance-id", default=os.environ.get(INSTANCE_ID_ENV) or str(uuid.uuid4()),
                   help=f"what GET /api/health reports as instance_id [env {INSTANCE_ID_ENV}; "
                        "default: a new uuid]")
    p.add_argument("--log-level", default=settings.log_level, type=str.upper, choices=LOG_LEVELS)
    args = p.parse_args(argv)
    if args.join_token is not None and len(args.join_token.strip()) < MIN_JOIN_TOKEN_CHARS:
        p.error(f"--join-token needs at least {MIN_JOIN_TOKEN_CHARS} characters")
    if args.mqtt_auth_dir is not None and not os.environ.get(PASSWORD_ENV):
        p.error(f"--mqtt-auth-dir needs the cluster's MQTT password in ${PASSWORD_ENV}")
    if (args.mqtt_ca or args.mqtt_cert or args.mqtt_key) and not args.mqtt_tls:
        p.error("--mqtt-ca/--mqtt-cert/--mqtt-key need --mqtt-tls")
    return args


def _explicit_cluster_url(settings: Settings) -> str | None:
    """``cluster_url`` when the environment or a file sets it (its default is a guess from cluster_port)."""
    return settings.cluster_url if not settings.sources["cluster_url"].startswith("default") else None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(args.log_level)
    config = build_config(
        args.name, args.root_url, args.mqtt_url, args.public_url or f"http://{args.host}:{args.port}",
        location=args.location, push_interval=args.push_interval, telemetry_interval=args.telemetry_interval,
        heartbeat_misses=args.heartbeat_misses, stage_timeout=args.stage_timeout,
        profile_timeout=args.profile_timeout)
    root_token = args.root_token or os.environ.get(ROOT_TOKEN_ENV) or None
    security = ClusterSecurity(
        root_token=root_token, join_tokens=True, join_token=args.join_token,
        mqtt_username=args.mqtt_username, mqtt_password=os.environ.get(PASSWORD_ENV) or None,
        mqtt_auth_dir=args.mqtt_auth_dir,
        mqtt_tls=TlsFiles(args.mqtt_ca, args.mqtt_cert, args.mqtt_key) if args.mqtt_tls else None,
        production=args.production)
    runtime = ClusterRuntime(config, args.data_dir, args.host, args.port, args.mqtt_url,
                             instance_id=args.instance_id, security=security, store_url=args.store_url)
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
