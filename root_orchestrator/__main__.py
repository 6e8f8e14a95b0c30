"""``python -m root_orchestrator --host H --port P --data-dir DIR [--store-url URL] [--public-url URL]``.

Opens the stores (default ``sqlite:///<data-dir>/root``), serves the Flask app with werkzeug's
threaded server in a background thread, and shuts down cleanly on SIGTERM/SIGINT. Logs go to
stderr; nothing is printed.
"""

from __future__ import annotations

import argparse
import logging
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from werkzeug.serving import make_server

from root_orchestrator.app import create_app
from root_orchestrator.cluster_client import HttpClusterClient
from root_orchestrator.stores import open_stores
from treeline_common.clock import SystemClock
from treeline_common.shutdown import ShutdownSignal

log = logging.getLogger("root_orchestrator")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="root_orchestrator", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=10000)
    parser.add_argument("--data-dir", required=True, type=Path)
    parser.add_argument("--store-url", default=None, help="default: sqlite:///<data-dir>/root")
    parser.add_argument("--public-url", default=None,
                        help="URL clusters use to reach this root (default http://<host>:<port>)")
    parser.add_argument("--active-window", type=float, default=30.0,
                        help="a cluster is active if it pushed or registered within this many seconds")
    parser.add_argument("--cluster-timeout", type=float, default=10.0)
    parser.add_argument("--log-level", default="INFO")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    data_dir: Path = args.data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    store_url = args.store_url or f"sqlite:///{data_dir / 'root'}"
    public_url = args.public_url or f"http://{args.host}:{args.port}"
    stores = open_stores(store_url)
    app = create_app(stores, SystemClock(), HttpClusterClient(timeout=args.cluster_timeout),
                     public_url=public_url, active_window_s=args.active_window)
    server = make_server(args.host, args.port, app, threaded=True)
    shutdown = ShutdownSignal()
    thread = threading.Thread(target=server.serve_forever, name="root-http", daemon=True)
    thread.start()
    log.info("root orchestrator listening on %s:%d (public %s, store %s)", args.host, server.port,
             public_url, store_url.split("://")[0])
    shutdown.wait()
    log.info("signal %s received; shutting down", shutdown.received)
    server.shutdown()
    thread.join(timeout=10)
    stores.close()
    log.info("root orchestrator stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
