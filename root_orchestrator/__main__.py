"""``python -m root_orchestrator [--host H] [--port P] [--data-dir DIR] [--store-url URL] [--public-url URL]
[--production] [--cluster-token TOKEN] [--instance-id ID] [--config FILE]``.

Defaults come from the settings every Treeline process shares (:mod:`treeline_common.config`:
``TREELINE_*`` environment, then ``treeline.toml``): ``--port`` is ``root_port``, ``--data-dir``
is ``<data_dir>/root``, ``--public-url`` is ``root_url`` when one is set, ``--log-level`` is
``log_level``. Flags win. ``--instance-id`` (default ``$TREELINE_INSTANCE_ID``, else a new uuid) is
what ``GET /api/health`` reports: ``treeline up`` gives each child its own and accepts only
that answer as its root being ready.

Opens the stores (default: an embedded MongoDB wire server it starts itself, data in
``<data-dir>/mongo``), serves the Flask app with werkzeug's threaded server in a background
thread, and shuts down cleanly on SIGTERM/SIGINT. Logs go to stderr as plain lines
(:mod:`treeline_common.logs`); nothing is printed.

Security (:mod:`root_orchestrator.auth.settings`): development mode when bound to loopback
without ``--production`` (``Admin``/``Admin`` is created if no user exists; internal routes also
answer callers without a token, on loopback only); production mode otherwise (no default
account: create the first admin with ``treeline admin create``). ``--cluster-token`` (or
``TREELINE_CLUSTER_TOKEN``) pre-seeds a token clusters may use (``--root-token`` on their side).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from root_orchestrator.api.context import context_of
from root_orchestrator.app import create_app
from root_orchestrator.auth import AuthService, SecurityConfig
from root_orchestrator.auth.settings import (
    CLUSTER_TOKEN_ENV,
    DEFAULT_ACCESS_TTL_S,
    DEFAULT_REFRESH_TTL_S,
    PRODUCTION_ENV,
    load_jwt_secret,
    truthy,
)
from root_orchestrator.cluster_client import HttpClusterClient
from root_orchestrator.identity import PROCESS_INSTANCE_ID
from root_orchestrator.stores import open_stores
from treeline_common.clock import SystemClock
from treeline_common.config import (
    INSTANCE_ID_ENV,
    ConfigError,
    Settings,
    add_config_argument,
    process_settings,
)
from treeline_common.logs import setup_logging
from treeline_common.mongo_server import ROOT_DATABASE, start_mongo_server
from treeline_common.shutdown import ShutdownSignal
from treeline_common.wsgi import make_http_server

log = logging.getLogger("root_orchestrator")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="root_orchestrator", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    try:
        settings = process_settings(argv)
    except ConfigError as exc:
        parser.error(str(exc))
    add_config_argument(parser)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=settings.root_port,
                        help=f"default: root_port ({settings.root_port}, {settings.sources['root_port']})")
    parser.add_argument("--data-dir", type=Path, default=settings.data_dir / "root",
                        help=f"default: <data_dir>/root ({settings.data_dir / 'root'})")
    parser.add_argument("--store-url", default=None,
                        help="mongodb://host:port/db (default: an embedded MongoDB wire server this process "
                             "starts, data in <data-dir>/mongo)")
    parser.add_argument("--public-url", default=_explicit_root_url(settings),
                        help="URL clusters use to reach this root (default: root_url when set, "
                             "else http://<host>:<port>)")
    parser.add_argument("--instance-id", default=os.environ.get(INSTANCE_ID_ENV) or PROCESS_INSTANCE_ID,
                        help=f"what GET /api/health reports as instance_id [env {INSTANCE_ID_ENV}; "
                             "default: a new uuid]")
    parser.add_argument("--ask-clusters", type=int, default=3,
                        help="how many candidate clusters are asked for a dry-run plan before a deployment "
                             "(the cheapest predicted plan wins; default 3)")
    parser.add_argument("--active-window", type=float, default=30.0,
                        help="a cluster is active if it pushed or registered within this many seconds; "
                             "the deployments of a cluster inactive this long fail over to another cluster")
    parser.add_argument("--cluster-timeout", type=float, default=10.0)
    parser.add_argument("--log-level", default=settings.log_level, type=str.upper,
                        choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    parser.add_argument("--production", action="store_true", default=truthy(os.environ.get(PRODUCTION_ENV)),
                        help=f"no default account, no anonymous internal calls [env {PRODUCTION_ENV}=1]; "
                             "implied by a non-loopback --host")
    parser.add_argument("--cluster-token", action="append", default=None, metavar="TOKEN",
                        help=f"a token clusters may use (repeatable; 16+ characters) "
                             f"[env {CLUSTER_TOKEN_ENV}, comma-separated]")
    parser.add_argument("--access-token-ttl", type=float, default=DEFAULT_ACCESS_TTL_S, metavar="SECONDS")
    parser.add_argument("--refresh-token-ttl", type=float, default=DEFAULT_REFRESH_TTL_S, metavar="SECONDS")
    parser.add_argument("--no-anonymous-internal", action="store_true",
                        help="development mode too: refuse internal calls without a cluster token")
    return parser.parse_args(argv)


def _explicit_root_url(settings: Settings) -> str | None:
    """``root_url`` when the environment or a file sets it (its default is a guess from root_port)."""
    return settings.root_url if not settings.sources["root_url"].startswith("default") else None


def security_config(args: argparse.Namespace, data_dir: Path) -> SecurityConfig:
    tokens = args.cluster_token or [t for t in os.environ.get(CLUSTER_TOKEN_ENV, "").split(",") if t.strip()]
    return SecurityConfig.build(jwt_secret=load_jwt_secret(data_dir, os.environ), host=args.host,
                                production=args.production, cluster_tokens=tokens,
                                access_ttl_s=args.access_token_ttl, refresh_ttl_s=args.refresh_token_ttl,
                                allow_anonymous_internal=not args.no_anonymous_internal)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(args.log_level)
    data_dir: Path = args.data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    if args.store_url:
        return _serve(args, data_dir, args.store_url)
    embedded = start_mongo_server(data_dir / "mongo")  # run alone: a wire server of its own
    try:
        return _serve(args, data_dir, embedded.db_url(ROOT_DATABASE))
    finally:
        embedded.stop()


def _serve(args: argparse.Namespace, data_dir: Path, store_url: str) -> int:
    public_url = args.public_url or f"http://{args.host}:{args.port}"
    security = security_config(args, data_dir)
    stores = open_stores(store_url)
    clock = SystemClock()
    AuthService(stores.users, clock, security).ensure_default_admin()
    if security.production and not stores.users.count_users():
        log.warning("production mode and no user yet: create the first admin with "
                    "`treeline admin create --root-data-dir %s --username NAME --password-stdin`", data_dir)
    app = create_app(stores, clock, HttpClusterClient(timeout=args.cluster_timeout),
                     public_url=public_url, active_window_s=args.active_window, security=security,
                     instance_id=args.instance_id, ask_clusters=args.ask_clusters)
    try:
        server = make_http_server(app, args.host, args.port, production=security.production)
    except OSError as exc:  # the port is taken: one clear line, not a traceback
        log.error("cannot listen on %s:%s: %s", args.host, args.port, exc.strerror or exc)
        stores.close()
        return 1
    shutdown = ShutdownSignal()
    failover = context_of(app).failover
    failover.start()
    thread = server.serve_in_thread("root-http")
    log.info("root orchestrator listening on %s:%d (%s; public %s, store %s, %s mode%s, instance %s)",
             args.host, server.port, "waitress" if security.production else "werkzeug development server",
             public_url, store_url.split("://")[0], security.mode,
             ", internal routes answer without a token on loopback" if security.anonymous_internal else "",
             args.instance_id)
    shutdown.wait()
    log.info("signal %s received; shutting down", shutdown.received)
    failover.stop()
    server.shutdown()
    thread.join(timeout=10)
    stores.close()
    log.info("root orchestrator stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
