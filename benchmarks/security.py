"""Security benchmark: what authentication costs per request at the root, and per hop on the data plane.

Run ``python -m benchmarks.security [--quick] [--json PATH]``. Prints a table and writes JSON
(default ``benchmarks/results/security.json``):

- ``auth_overhead_ms_p50`` (and ``_p90``): the guard's work for one request with a user's JWT
  (``AuthService.authenticate``: signature and expiry check, the user read from the SQLite user
  store, the password-version check), timed alone, ``time.perf_counter`` around each call.
- ``cluster_auth_ms_p50``: the same for a stored cluster token (a digest and a store read).
- ``guarded_request_ms_p50`` / ``public_request_ms_p50``: a whole request through Flask's test
  client, ``GET /api/clusters/`` with a token against ``GET /api/health`` without one (context:
  the difference includes the route's own work, not only authentication).
- ``login_ms_p50``: ``POST /api/auth/login`` (one argon2 verification; deliberately slow).
- ``upload_peak_rss_mb``, ``schemathesis_cases``, ``server_errors`` (and their context keys): the
  hardened-API figures measured on a real root process by :mod:`benchmarks.hardening`.
- ``curve_hop_overhead_ms`` and ``auth_hop_overhead_ms``: what CURVE encryption and the data
  key's authenticator add to one 100 KB data-plane hop (p50 minus plain TCP's p50), measured by
  :func:`benchmarks.dataplane.run` on real zmq sockets (``dataplane_hop_plain_p50_ms`` and
  ``dataplane_requests_per_mode`` give the context; ``python -m benchmarks.dataplane`` has the rest).

No stack or network for the authentication figures: an in-process root on a temporary SQLite
store (the hardened-API figures start one root process; the data-plane figures loopback nodes).
"""

from __future__ import annotations

import logging
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import dataplane, hardening
from benchmarks.report import add_json_option, benchmark_parser, report
from root_orchestrator.app import create_app
from root_orchestrator.auth import AuthService, SecurityConfig
from root_orchestrator.auth.tokens import ACCESS
from root_orchestrator.cluster_client import HttpClusterClient
from root_orchestrator.stores import open_stores
from treeline_common.clock import SystemClock
from treeline_common.mongo_server import start_mongo_server

log = logging.getLogger(__name__)

PASSWORD = "benchmark-password"


def _times_ms(call: Callable[[], Any], reps: int) -> list[float]:
    call()  # warm up (connection, caches)
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1000.0)
    return times


def _p(times: list[float], q: float) -> float:
    return float(np.percentile(times, q))


# the data-plane figures this report carries, from benchmarks.dataplane.run (key there -> key here)
DATA_PLANE_KEYS = {"curve_hop_overhead_ms": "curve_hop_overhead_ms",
                   "auth_hop_overhead_ms": "auth_hop_overhead_ms",
                   "hop_plain_p50_ms": "dataplane_hop_plain_p50_ms",
                   "requests_per_mode": "dataplane_requests_per_mode"}


def data_plane(quick: bool = False) -> dict[str, Any]:
    """The data plane's per-hop security overheads, as :func:`benchmarks.dataplane.run` measures them."""
    measured = dataplane.run(quick)
    return {ours: measured[theirs] for theirs, ours in DATA_PLANE_KEYS.items()}


def run(quick: bool = False, hardened: bool = True, data_plane_hops: bool = True) -> dict[str, Any]:
    """Every security metric as a flat dict (the JSON report); ``hardened``: with the figures of
    :mod:`benchmarks.hardening` (a real root process, about 10 s); ``data_plane_hops``: with the
    data plane's hop overheads (:mod:`benchmarks.dataplane`, about 10 s)."""
    reps = 300 if quick else 2000
    with tempfile.TemporaryDirectory() as tmp:
        server = start_mongo_server(Path(tmp) / "mongo")  # the root's store: an embedded MongoDB server
        stores = open_stores(server.db_url("bench"))
        try:
            security = SecurityConfig(jwt_secret="benchmark-signing-key-0123456789abcdef")
            app = create_app(stores, SystemClock(), HttpClusterClient(), security=security)
            auth: AuthService = app.extensions["treeline_auth"]
            user = auth.create_user("bench", PASSWORD, ["admin"])
            header = f"Bearer {auth.tokens.issue(user, ACCESS)}"
            admin = auth.authenticate(header)
            assert admin is not None
            cluster_header = f"Bearer {auth.create_cluster_token(admin, 'bench')[1]}"
            user_auth = _times_ms(lambda: auth.authenticate(header), reps)
            cluster_auth = _times_ms(lambda: auth.authenticate(cluster_header), reps)
            client = app.test_client()
            guarded = _times_ms(lambda: client.get("/api/clusters/", headers={"Authorization": header}), reps)
            public = _times_ms(lambda: client.get("/api/health"), reps)
            logins = _times_ms(lambda: client.post("/api/auth/login", json={"username": "bench",
                                                                           "password": PASSWORD}),
                               5 if quick else 20)
        finally:
            stores.close()
            server.stop()
    return {"auth_overhead_ms_p50": _p(user_auth, 50), "auth_overhead_ms_p90": _p(user_auth, 90),
            "cluster_auth_ms_p50": _p(cluster_auth, 50),
            "guarded_request_ms_p50": _p(guarded, 50), "public_request_ms_p50": _p(public, 50),
            "login_ms_p50": statistics.median(logins), "security_repetitions": reps,
            # hardened APIs on a real root process: upload_peak_rss_mb, schemathesis_cases,
            # server_errors (benchmarks.hardening)
            **(hardening.run(quick) if hardened else {}),
            **(data_plane(quick) if data_plane_hops else {})}


def auth_overhead_ms_p50(quick: bool = True) -> float:
    """p50 milliseconds the root spends authenticating one request with a user's bearer token."""
    return float(run(quick, hardened=False, data_plane_hops=False)["auth_overhead_ms_p50"])


def main(argv: Sequence[str] | None = None) -> int:
    parser = benchmark_parser(__doc__, "fewer repetitions")
    add_json_option(parser, "security")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("node_engine").setLevel(logging.WARNING)  # the data-plane nodes' start/stop lines
    result = run(args.quick)
    report(result, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
