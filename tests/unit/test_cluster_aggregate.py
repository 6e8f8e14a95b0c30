"""The aggregate pushed to the root summarises online nodes only."""

from __future__ import annotations

from cluster_orchestrator.aggregate import compute_aggregate, significant_change


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


def test_aggregate_serves_ml_placement() -> None:
    rpi = {**node(True, 5.0, 50.0, 900, 1024, 4, profile="rpi4"), "arch": "aarch64", "device_class": "rpi4",
           "speed_factor": 0.25, "battery": {"percent": 80.0}, "uplink_mbps": 20.0, "link_rtt_ms": 8.0}
    gpu = {**node(True, 5.0, 50.0, 6000, 8192, 8, [{"kind": "gpu", "name": "orin"}], "jetson"),
           "arch": "aarch64", "device_class": "jetson", "speed_factor": 2.0}
    gpu["telemetry"]["links"] = [{"peer": "x", "rtt_ms": 1.5, "mbps": 400.0}]  # measured wins over declared
    srv = {**node(True, 5.0, 50.0, 3000, 16000, 16), "arch": "x86_64", "device_class": "server", "speed_factor": 1.0}
    agg = compute_aggregate([rpi, gpu, srv, {**srv, "online": False, "arch": "riscv64"}])
    assert agg["memory_total_free_mb"] == 900 + 6000 + 3000 and agg["memory_largest_free_mb"] == 6000
    assert agg["architectures"] == {"aarch64": 2, "x86_64": 1}  # online nodes only
    assert agg["accelerator_kinds"] == {"gpu": 1}
    assert agg["device_classes"] == {"rpi4": 1, "jetson": 1, "server": 1}
    assert agg["best_device_class"] == "jetson" and agg["best_speed_factor"] == 2.0
    assert agg["battery_share"] == round(1 / 3, 4)
    assert agg["links"] == {"uplink_mbps_median": 20.0 + (400.0 - 20.0) / 2, "rtt_ms_median": (8.0 + 1.5) / 2,
                            "measured_nodes": 1}


def test_significant_change_is_what_the_root_would_choose_differently_on() -> None:
    base = compute_aggregate([node(True, 5.0, 50.0, 3000, 4096, 4), node(True, 5.0, 50.0, 2000, 4096, 4)])
    assert significant_change(None, base)
    assert not significant_change(base, dict(base))
    assert not significant_change(base, {**base, "memory_total_free_mb": base["memory_total_free_mb"] * 1.1,
                                         "cpu_percent": 90.0})  # noise: the periodic push carries it
    assert significant_change(base, {**base, "active_nodes": 1})
    assert significant_change(base, {**base, "memory_largest_free_mb": base["memory_largest_free_mb"] * 0.5})
    assert significant_change(base, {**base, "accelerator_kinds": {"gpu": 1}})
    assert significant_change(base, {**base, "best_device_class": "other"})
