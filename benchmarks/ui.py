"""The operator web UI under a real fleet: first paint, live update period and the root's CPU.

Real processes on loopback: Mosquitto, the root and one cluster orchestrator, 100 virtual nodes
from ``node_engine.simulator`` (one MQTT session each, real registration and telemetry) and 20
deployments of the tiny model placed on them; the dashboard is the real page in Debian's
Chromium, driven by Playwright. Figures (issue 12, "Measured"):

- ``first_paint_ms`` (median of ``--paints`` loads, goal < 1000): from navigation start to the
  fleet table showing every node and the deployments table every deployment (the page, its
  scripts, sign-in state from ``sessionStorage``, one ``/api/ui/overview`` and the render);
- ``update_period_s`` (median interval between the page's successive overview answers, goal
  <= 2) and ``update_period_p95_s``;
- ``root_cpu_percent_dashboard`` (% of one core over ``--window`` s with one dashboard open,
  goal <= 5) against ``root_cpu_percent_idle`` (no dashboard, same fleet): the difference is
  what the dashboard costs; ``cluster_cpu_percent_dashboard`` likewise for the cluster, which
  answers the root's node fan-out (cached for 1 s at the root);
- ``overview_ms_p50`` / ``overview_kb``: the root's answer time and size, asked directly.

Run: ``python -m benchmarks.ui [--quick] [--json PATH]`` (``--quick``: 30 nodes, 6 deployments,
shorter windows). Needs Mosquitto and Chromium (``make browser``).
"""

from __future__ import annotations

import itertools
import logging
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psutil
import requests

from benchmarks.hierarchy_cluster import (
    cluster_stack,
    fleet_config,
    register_tiny_model,
    submit_deployments,
    wait_all_running,
    wait_online_count,
)
from benchmarks.report import add_json_option, benchmark_parser, report
from node_engine.simulator import Fleet
from treeline_cli.root_client import DEV_ACCOUNT, RootClient, login

log = logging.getLogger(__name__)

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]
GOALS = {"first_paint_ms": "< 1000", "update_period_s": "<= 2", "root_cpu_percent_dashboard": "<= 5"}


def _cpu(pids: Sequence[int], seconds: float) -> list[float]:
    """CPU % of one core of each process over a window of ``seconds``."""
    procs = [psutil.Process(p) for p in pids]
    for p in procs:
        p.cpu_percent(None)
    time.sleep(seconds)  # the measurement window itself, not a wait for a condition
    return [round(float(p.cpu_percent(None)), 2) for p in procs]


def _overview_stats(root_url: str, token: str, runs: int) -> tuple[float, float]:
    """(p50 ms, size KB) of ``GET /api/ui/overview`` asked directly (the cache warm or not)."""
    times, size = [], 0
    with requests.Session() as http:
        http.headers["Authorization"] = f"Bearer {token}"
        for _ in range(runs):
            start = time.perf_counter()
            answer = http.get(f"{root_url}/api/ui/overview", timeout=30)
            times.append((time.perf_counter() - start) * 1000.0)
            answer.raise_for_status()
            size = len(answer.content)
    return statistics.median(times), size / 1024.0


def measure(nodes: int, deployments: int, *, paints: int, window_s: float) -> dict[str, Any]:
    """Start the fleet, deploy, then measure with and without a dashboard (module docstring)."""
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="treeline-ui-bench-") as tmp, cluster_stack(Path(tmp)) as stack:
        register_tiny_model(stack)
        fleet = Fleet(fleet_config(stack, nodes))
        try:
            fleet.start(timeout=120)
            wait_online_count(stack, nodes, timeout=90)
            log.info("%d virtual nodes online; deploying %d services", nodes, deployments)
            wait_all_running(stack, submit_deployments(stack, deployments), timeout=180)
            tokens = login(stack.root_url, *DEV_ACCOUNT)
            RootClient(stack.root_url).services()  # the root is warm
            pids = [stack.process("root").pid, stack.process("cluster").pid]
            idle = _cpu(pids, window_s)
            overview_ms, overview_kb = _overview_stats(stack.root_url, tokens["token"], 20)
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                try:
                    page = browser.new_page(viewport={"width": 1400, "height": 1000})
                    page.goto(f"{stack.root_url}/ui/")
                    page.evaluate("""t => { sessionStorage.setItem('treeline.token', t.token);
                                     sessionStorage.setItem('treeline.refresh', t.refresh_token);
                                     sessionStorage.setItem('treeline.user', 'Admin'); }""", tokens)
                    paint = []
                    ready = (f"() => document.querySelectorAll('#nodes tbody tr').length === {nodes} && "
                             f"document.querySelectorAll('#services tbody tr').length === {deployments}")
                    for _ in range(paints):
                        page.goto(f"{stack.root_url}/ui/", wait_until="commit")
                        page.wait_for_function(ready, timeout=30_000, polling="raf")
                        paint.append(float(page.evaluate("performance.now()")))
                    busy = _cpu(pids, window_s)
                    # the page's own resource timings (ms since its navigation) of each overview answer
                    answers = [t / 1000.0 for t in page.evaluate(
                        "performance.getEntriesByType('resource')"
                        ".filter(e => e.name.includes('/api/ui/overview')).map(e => e.responseEnd)")]
                finally:
                    browser.close()
        finally:
            fleet.kill()
    gaps = [b - a for a, b in itertools.pairwise(answers)]
    return {
        "nodes": nodes, "deployments": deployments, "paints": paints, "window_s": window_s,
        "first_paint_ms": round(statistics.median(paint), 1), "first_paint_ms_max": round(max(paint), 1),
        "update_period_s": round(statistics.median(gaps), 3) if gaps else None,
        "update_period_p95_s": round(sorted(gaps)[int(0.95 * (len(gaps) - 1))], 3) if gaps else None,
        "root_cpu_percent_idle": idle[0], "root_cpu_percent_dashboard": busy[0],
        "cluster_cpu_percent_idle": idle[1], "cluster_cpu_percent_dashboard": busy[1],
        "overview_ms_p50": round(overview_ms, 2), "overview_kb": round(overview_kb, 1),
    }


def run(quick: bool = False) -> dict[str, Any]:
    nodes, deployments = (30, 6) if quick else (100, 20)
    result: dict[str, Any] = {"mode": "quick" if quick else "full", "goals": GOALS,
                              "cpu_count": psutil.cpu_count()}
    result.update(measure(nodes, deployments, paints=3 if quick else 7, window_s=10.0 if quick else 30.0))
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = benchmark_parser(__doc__, "30 nodes and 6 deployments, shorter windows")
    add_json_option(parser, "ui")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for noisy in ("node_engine", "treeline_cli.stack", "treeline_cli.broker"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    report(run(args.quick), args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
