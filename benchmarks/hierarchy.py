"""The hierarchy at fleet scale: one cluster with 1,000 nodes, a root with 20 clusters, failover.

Run ``python -m benchmarks.hierarchy [--quick] [--json PATH]``. Prints a table and writes JSON
(default ``benchmarks/results/hierarchy.json``). Three parts, each on real processes on loopback
(goals in brackets):

- one cluster orchestrator and a real Mosquitto against the node simulator
  (:mod:`benchmarks.hierarchy_cluster`, :mod:`node_engine.simulator`): ``nodes`` virtual nodes in
  one process, one MQTT session each, real births, last wills and telemetry every 2 s; 100
  deployments of a small model placed on them. ``cluster_cpu_percent_1000_nodes`` [<= 50, of one
  core], ``cluster_rss_mb_1000_nodes``, ``schedule_ms_p50_1000_nodes`` [<= 200: one ML
  deployment planned against every node], the mass last will (simulator killed) and the re-plans
  it caused;
- a real root with 20 simulated clusters pushing through its REST API
  (:mod:`benchmarks.hierarchy_root`): ``root_choice_ms_p50_20_clusters`` [<= 500, dry runs
  included];
- two real clusters, one killed under traffic (:mod:`benchmarks.hierarchy_failover`):
  ``cluster_failover_s`` [<= 20 with a 10 s window], ``failover_failed_requests`` [0], the same
  with the whole cluster (orchestrator, broker and nodes) killed, and deployments the returned
  cluster failed to release [0].

``--quick`` (about 2 minutes): 300 nodes and 20 deployments, 10 root choices, one failover
round of each kind. The full run: 1,000 nodes and 100 deployments, 30 choices, two rounds each.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import psutil

from benchmarks.hierarchy_cluster import PER_NODE, measure_cluster
from benchmarks.hierarchy_failover import measure_failover
from benchmarks.hierarchy_root import measure_root
from benchmarks.report import add_json_option, benchmark_parser, report

log = logging.getLogger(__name__)

GOALS = {"cluster_cpu_percent_1000_nodes": "<= 50", "schedule_ms_p50_1000_nodes": "<= 200",
         "root_choice_ms_p50_20_clusters": "<= 500", "cluster_failover_s": "<= 20 (10 s window)",
         "failover_failed_requests": "0", "failover_duplicates_after_return": "0"}


def run(quick: bool = False) -> dict[str, Any]:
    nodes, deployments = (300, 20) if quick else (1000, 100)
    result: dict[str, Any] = {"mode": "quick" if quick else "full", "goals": GOALS,
                              "cpu_count": psutil.cpu_count()}
    log.info("part 1/3: one cluster, %d virtual nodes", nodes)
    result.update(measure_cluster(nodes, deployments, PER_NODE, steady_s=10.0 if quick else 20.0))
    log.info("part 2/3: a root with 20 simulated clusters")
    result.update(measure_root(clusters=20, choices=10 if quick else 30))
    log.info("part 3/3: cluster failover under traffic")
    result.update(measure_failover(rounds=1 if quick else 2))
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = benchmark_parser(__doc__, "300 nodes, 10 choices, one failover round of each kind (~2 minutes)")
    add_json_option(parser, "hierarchy")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for quiet in ("node_engine", "treeline_cli.stack", "werkzeug", "treeline_cli.broker"):
        logging.getLogger(quiet).setLevel(logging.WARNING)
    report(run(args.quick), args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
