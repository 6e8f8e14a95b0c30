"""The root against many clusters: cluster choice with dry runs, over the real REST API.

A real root process (``python -m root_orchestrator`` on loopback, SQLite store) and
``clusters`` simulated cluster orchestrators in this process. Each simulated cluster is a small
HTTP server speaking the cluster side of the root's contract for real: it registers at
``POST /api/clusters/register`` with a cluster token, pushes a
:class:`~treeline_common.jobs.ClusterPush` aggregate every ``push_interval`` through
``POST /api/information/<id>``, answers dry runs (``POST /api/plan``) with a plan summary whose
predicted latency is fixed per cluster, and accepts deployments (``POST /api/service/...``)
without running anything. What is measured is therefore the root's own cost: filtering the
clusters' aggregates from its store, asking the best few for a dry run in parallel, ordering the
answers and forwarding the job (a real cluster's dry run adds its planning time: see
``schedule_ms_p50_1000_nodes``).

Figures: ``root_choice_ms_p50_<N>_clusters`` / ``..._p95_...`` (``POST
/api/service/<id>/instance`` round trip, dry runs included; goal p50 <= 500 ms),
``root_choice_asked_max`` (dry runs per choice: at most ``--ask-clusters``) and
``root_choice_cheapest_share`` (choices that went to the cluster whose dry run was cheapest).
"""

from __future__ import annotations

import logging
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from flask import Flask, jsonify

from benchmarks.hierarchy_cluster import MODEL_NAME, tiny_sla
from benchmarks.report import benchmark_parser, print_table
from cluster_orchestrator.root_client import RootClient as ClusterSideRootClient
from model_zoo.tiny import tiny_dag_bytes
from treeline_cli.root_client import RootClient
from treeline_common.netutil import free_port, poll_until
from treeline_common.wsgi import HttpServer, make_http_server

log = logging.getLogger(__name__)

CLUSTER_TOKEN = "hierarchy-benchmark-cluster-token-0123456789"


class SimulatedCluster:
    """One simulated cluster orchestrator (see the module docstring)."""

    def __init__(self, index: int, root_url: str, latency_ms: float, push_interval: float) -> None:
        self.name = f"sim-{index:02d}"
        self.latency_ms = latency_ms
        self.push_interval = push_interval
        self.plans = 0
        self.deployed: list[str] = []
        self._stop = threading.Event()
        self._server: HttpServer = make_http_server(self._app(), "127.0.0.1", 0, production=False)
        self.url = f"http://127.0.0.1:{self._server.port}"
        self._root = ClusterSideRootClient(root_url, timeout=10.0, token=CLUSTER_TOKEN)
        self.cluster_id = ""
        self.aggregate = {"active_nodes": 50 + index, "total_nodes": 50 + index, "memory": 40_000,
                          "memory_total_free_mb": 40_000, "memory_largest_free_mb": 4_000, "vcpus": 200,
                          "architectures": {"x86_64": 40, "aarch64": 10 + index}, "accelerator_kinds": {},
                          "device_classes": {"server": 10, "rpi4": 40 + index}, "best_device_class": "server",
                          "best_speed_factor": 1.0, "battery_share": 0.5, "cpu_percent": 10.0}

    def _app(self) -> Flask:
        app = Flask(self.__class__.__name__)

        @app.post("/api/plan")
        def plan() -> Any:
            self.plans += 1
            return jsonify({"schedulable": True, "strategy": "optimal", "message": "",
                            "predicted": {"objective": "latency", "latency_ms": self.latency_ms,
                                          "bottleneck_ms": self.latency_ms, "energy_mj": 1.0},
                            "stages": [{"index": 0, "node_name": "n1", "flops": 1, "cut_bytes": 0,
                                        "predicted_compute_ms": self.latency_ms}], "reasons": {}})

        @app.post("/api/service/<service_id>/<int:instance>")
        def deploy(service_id: str, instance: int) -> Any:
            self.deployed.append(f"{service_id}/{instance}")
            return jsonify({"accepted": True})

        @app.delete("/api/service/<service_id>/<int:instance>")
        def undeploy(service_id: str, instance: int) -> Any:
            return jsonify({"deleted": True})

        return app

    def start(self) -> None:
        self._server.serve_in_thread(f"{self.name}-http")
        self.cluster_id = poll_until(lambda: self._root.register_cluster(self.name, "bench", self.url), 30.0,
                                     what=f"{self.name} registered")
        self.push()
        threading.Thread(target=self._push_loop, name=f"{self.name}-push", daemon=True).start()

    def push(self) -> None:
        self._root.push_information(self.cluster_id, {"aggregate": self.aggregate, "jobs": []})

    def _push_loop(self) -> None:
        while not self._stop.wait(self.push_interval):
            try:
                self.push()
            except Exception as exc:  # noqa: BLE001 - a benchmark cluster keeps pushing
                log.warning("%s push failed: %s", self.name, exc)

    def stop(self) -> None:
        self._stop.set()
        self._server.shutdown()


def start_root(data_dir: Path, port: int, ask: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "TREELINE_CLUSTER_TOKEN": CLUSTER_TOKEN}
    log_file = (data_dir / "root.log").open("ab")
    return subprocess.Popen([sys.executable, "-m", "root_orchestrator", "--host", "127.0.0.1",
                             "--port", str(port), "--data-dir", str(data_dir), "--ask-clusters", str(ask),
                             "--log-level", "WARNING"],
                            env=env, stdout=log_file, stderr=subprocess.STDOUT)


def measure_root(clusters: int = 20, choices: int = 30, ask: int = 3, push_interval: float = 2.0,
                 progress: Callable[[str], None] = log.info) -> dict[str, Any]:
    """Start a root and ``clusters`` simulated clusters; time ``choices`` deployments."""
    rng = random.Random(7)
    with tempfile.TemporaryDirectory(prefix="treeline-hierarchy-root-") as tmp:
        port = free_port()
        root_url = f"http://127.0.0.1:{port}"
        process = start_root(Path(tmp), port, ask)
        sims: list[SimulatedCluster] = []
        try:
            client = RootClient(root_url, timeout=30.0)
            poll_until(lambda: client.health(), 30.0, what="the root answering")
            sims = [SimulatedCluster(i, root_url, round(rng.uniform(2.0, 50.0), 2), push_interval)
                    for i in range(clusters)]
            for sim in sims:
                sim.start()
            progress(f"root with {clusters} simulated clusters ready")
            client.register_model(MODEL_NAME, tiny_dag_bytes(0))
            times: list[float] = []
            cheapest = 0
            asked_max = 0
            for i in range(choices):
                [app] = client.submit_sla(tiny_sla(f"app-{i}"))
                [service_id] = app["microservices"]
                started = time.perf_counter()
                answer = client.deploy_service(service_id)
                times.append((time.perf_counter() - started) * 1e3)
                [event] = [e for e in client.service_events(service_id) if e.get("kind") == "cluster_choice"]
                answers = [a for a in event["candidates"] if a.get("ok")]
                asked_max = max(asked_max, len(event["candidates"]))
                best = min(answers, key=lambda a: a["cost"]) if answers else None
                cheapest += int(best is not None and best["cluster_id"] == answer["cluster_id"])
                if (i + 1) % 10 == 0:
                    progress(f"{i + 1}/{choices} choices, p50 {statistics.median(times):.1f} ms")
            deployments = sum(len(sim.deployed) for sim in sims)
        finally:
            for sim in sims:
                sim.stop()
            process.terminate()
            process.wait(10)
    ordered = sorted(times)
    return {f"root_choice_ms_p50_{clusters}_clusters": round(statistics.median(ordered), 2),
            f"root_choice_ms_p95_{clusters}_clusters": round(ordered[max(0, int(len(ordered) * 0.95) - 1)],
                                                             2),
            "root_choice_asked_max": asked_max,
            "root_choice_cheapest_share": round(cheapest / max(1, choices), 3),
            "root_choice_clusters": clusters, "root_choice_deployments": deployments}


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m benchmarks.hierarchy_root [--quick]``: this part alone (table only)."""
    parser = benchmark_parser(__doc__, "10 choices instead of 30")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    print_table(sorted(measure_root(choices=10 if args.quick else 30).items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
