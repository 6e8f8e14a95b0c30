"""The aggregate pushed to the root summarises online nodes only."""

from __future__ import annotations

from cluster_orchestrator.aggregate import compute_aggregate


def node(online: bool, cpu: float, mem_pct: float, avail: int, limit: int, cores: int,
         accelerators: list | None = None, profile: str = "server") -> dict:
    return {"online": online, "profile": profile, "memory_limit_mb": limit, "cpu_count": cores,
            "telemetry": {"cpu_percent": cpu, "memory_percent": mem_pct, "memory_available_mb": avail,
                          "memory_limit_mb": limit, "cpu_count": cores, "accelerators": accelerators or []}}


def test_aggregate_over_online_nodes() -> None:
    nodes = [
        node(True, 10.0, 20.0, 3000, 4096, 4, [{"kind": "gpu", "name": "maxwell"}], "jetson-nano"),
        node(True, 30.0, 60.0, 9000, 2048, 8),  # offers less than the host has free: capped
        node(False, 99.0, 99.0, 9999, 9999, 64, [{"kind": "gpu", "name": "x"}]),
    ]
    agg = compute_aggregate(nodes)
    assert agg["active_nodes"] == 2 and agg["total_nodes"] == 3
    assert agg["cpu_percent"] == 20.0 and agg["memory_percent"] == 40.0
    assert agg["memory"] == 3000 + 2048
    assert agg["vcpus"] == 12
    assert agg["gpus"] == 1 and agg["accelerators"] == 1
    assert agg["profiles"] == {"jetson-nano": 1, "server": 1}


def test_aggregate_of_no_nodes_is_zero_not_an_error() -> None:
    agg = compute_aggregate([])
    assert agg["active_nodes"] == 0 and agg["cpu_percent"] == 0.0 and agg["memory"] == 0
