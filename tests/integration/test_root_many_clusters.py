"""A real root process with 20 simulated clusters pushing through its REST API.

The simulated clusters (:class:`benchmarks.hierarchy_root.SimulatedCluster`) register with a
cluster token, push aggregates and answer dry runs with a fixed predicted latency each. Checked:
every choice asks at most ``--ask-clusters`` (3) clusters and deploys to the one whose dry run
was cheapest among them, and every deployment reached exactly one cluster.
"""

from __future__ import annotations

import pytest

from benchmarks.hierarchy_root import measure_root

pytestmark = pytest.mark.integration


def test_root_chooses_among_20_clusters_by_dry_run() -> None:
    result = measure_root(clusters=20, choices=6, ask=3, push_interval=1.0)
    assert result["root_choice_clusters"] == 20
    assert result["root_choice_asked_max"] == 3
    assert result["root_choice_cheapest_share"] == 1.0
    assert result["root_choice_deployments"] == 6  # each job forwarded to exactly one cluster
