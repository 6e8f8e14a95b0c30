"""Cluster ranking is a pure function of the cluster docs and ``now``."""

from __future__ import annotations

from typing import Any

import pytest

from root_orchestrator.ranking import is_active, rank_clusters


def cluster(name: str, registered_at: float = 0.0, last_push: float | None = None,
            **aggregate: Any) -> dict[str, Any]:
    return {"cluster_id": name, "cluster_name": name, "url": f"http://{name}", "registered_at": registered_at,
            "last_push": last_push, "aggregate": aggregate}


@pytest.mark.parametrize(("doc", "now", "active"), [
    (cluster("a", registered_at=100.0), 130.0, True),           # just registered, never pushed
    (cluster("a", registered_at=100.0), 130.1, False),
    (cluster("a", registered_at=0.0, last_push=100.0), 125.0, True),  # recent push
    (cluster("a", registered_at=0.0, last_push=10.0), 125.0, False),
])
def test_activity_window(doc: dict[str, Any], now: float, active: bool) -> None:
    assert is_active(doc, now, 30.0) is active


def test_rank_orders_by_active_nodes_then_memory_then_name() -> None:
    docs = [cluster("c", 100.0, active_nodes=2, memory=100), cluster("b", 100.0, active_nodes=2, memory=900),
            cluster("a", 100.0), cluster("z", 100.0, active_nodes=4), cluster("old", 0.0, active_nodes=99),
            cluster("d", 100.0, active_nodes=2, memory=100)]
    assert [c["cluster_name"] for c in rank_clusters(docs, now=110.0)] == ["z", "b", "c", "d", "a"]


def test_rank_ignores_non_numeric_aggregate_values() -> None:
    docs = [cluster("x", 100.0, active_nodes="many"), cluster("y", 100.0, active_nodes=True),
            cluster("w", 100.0, online_nodes=1)]
    assert [c["cluster_name"] for c in rank_clusters(docs, now=100.0)] == ["w", "x", "y"]
