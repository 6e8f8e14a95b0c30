"""The root deploys the fastest measured variant that keeps the SLA's accuracy floor and is among
its ``variants``; ``latest`` names the newest version that is not a variant of another."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from test_root_api import Root, ml_sla, tiny_onnx
from test_root_failover import push, report

from root_orchestrator.stores import open_stores
from root_orchestrator.variants import choose_variant, fleet_device_class


def version(number: int, variant: str | None, quality: float | None, **p50: float) -> dict[str, Any]:
    doc: dict[str, Any] = {"name": "m", "version": number, "sha256": f"{number:064d}", "tags": {}, "metrics": {}}
    if variant:
        doc["tags"] = {"optimize.variant": variant}
        doc["lineage"] = {"parent": {"name": "m", "version": 1}, "operation": variant}
    if quality is not None:
        doc["metrics"]["quality"] = {"accuracy": quality}
    doc["metrics"].update({f"latency/{dc}": {"p50_ms": ms} for dc, ms in p50.items()})
    return doc


BASE = version(1, None, 0.99, server=10.0, rpi4=40.0)
INT8 = version(2, "int8", 0.985, server=6.0, rpi4=20.0)
STUDENT = version(3, "distilled", 0.95, server=2.0, rpi4=8.0)
FP16 = version(4, "fp16", 0.99, server=12.0)


@pytest.mark.parametrize(("allowed", "floor", "device", "chosen", "why"), [
    (("fp32", "int8", "distilled"), 0.98, "server", 2, "int8 is the fastest"),
    (("fp32", "int8", "distilled"), 0.90, "server", 3, "distilled is the fastest"),
    (("fp32", "fp16"), 0.98, "server", 1, "fp32 is the fastest"),  # fp16 measured slower: never assumed
    (("fp32", "int8", "fp16"), 0.98, "rpi4", 2, "(not measured on rpi4: on server)"),  # fp16 lacks rpi4
    (("fp32",), 0.0, "server", 1, "no allowed variant"),
    (("fp32", "int8"), 0.999, "server", 1, "no allowed variant above the floor"),
])
def test_the_fastest_allowed_variant_above_the_floor_wins(allowed: tuple[str, ...], floor: float, device: str,
                                                          chosen: int, why: str) -> None:
    picked, explanation = choose_variant(BASE, [INT8, STUDENT, FP16], allowed, floor, device)
    assert picked["version"] == chosen and explanation["chosen"] == chosen and why in explanation["why"]
    outs = {row["version"]: row.get("out", "") for row in explanation["candidates"]}
    if "distilled" not in allowed:
        assert "not among the SLA's variants" in outs[3]


def test_the_fleet_device_class_is_the_fastest_cluster_best() -> None:
    clusters = [{"aggregate": {"best_device_class": "rpi4", "best_speed_factor": 0.25}},
                {"aggregate": {"best_device_class": "server", "best_speed_factor": 1.0}}, {"aggregate": {}}]
    assert fleet_device_class(clusters) == "server" and fleet_device_class([]) is None


@pytest.fixture()
def root(mongo_url: str) -> Iterator[Root]:
    stores = open_stores(mongo_url)
    yield Root(stores)
    stores.close()


def test_a_deployment_gets_the_chosen_variant_and_latest_skips_variants(root: Root) -> None:
    base = root.register_model()
    root.http.patch("/api/models/tiny/versions/1", json={"metrics": {
        "quality": {"accuracy": 0.99}, "latency/server": {"p50_ms": 10.0}}})
    int8 = root.register_model(data=tiny_onnx(3.0))
    patched = root.http.patch(f"/api/models/tiny/versions/{int8['version']}", json={
        "lineage": {"parent": {"name": "tiny", "version": 1}, "operation": "int8", "parameters": {},
                    "dataset": "digits", "tools": {}},
        "metrics": {"quality": {"accuracy": 0.985}, "latency/server": {"p50_ms": 5.0}},
        "tags": {"optimize.variant": "int8"}})
    assert patched.status_code == 200, patched.get_json()
    cid = root.register_cluster("a", "http://a:1", active_nodes=1, memory=1000, best_device_class="server",
                                best_speed_factor=1.0)
    plain = root.submit(ml_sla("latest"))  # default variants: fp32 only; latest skips the int8 variant
    root.http.post(f"/api/service/{plain}/instance")
    assert root.clusters.deployed[-1][3]["model"]["sha256"] == base["sha256"]
    sla = ml_sla("latest")
    model = sla["applications"][0]["microservices"][0]["model"]
    model.update(variants=["fp32", "int8"], accuracy_floor=0.98)
    sla["applications"][0]["application_name"] = "fast"
    fast = root.submit(sla)
    assert root.http.post(f"/api/service/{fast}/instance").status_code in (200, 201, 202)
    assert root.clusters.deployed[-1][3]["model"]["sha256"] == int8["sha256"]
    push(root, cid, report(fast, "RUNNING"))
    resolved = root.http.get(f"/api/service/{fast}").get_json()["model"]["resolved"]
    assert resolved["version"] == int8["version"]
    assert resolved["variant_choice"]["measured_on"] == "server" and resolved["variant_choice"]["speedup"] == 2.0


def test_latest_is_the_newest_version_that_is_not_a_variant_everywhere(root: Root) -> None:
    base = root.register_model()
    variant = root.register_model(data=tiny_onnx(3.0))
    root.http.patch(f"/api/models/tiny/versions/{variant['version']}", json={
        "lineage": {"parent": {"name": "tiny", "version": 1}, "operation": "int8", "parameters": {},
                    "dataset": "d", "tools": {}}, "tags": {"optimize.variant": "int8"}})
    assert root.http.get("/api/models/tiny/versions/latest").get_json()["version"] == base["version"]
    [listed] = root.http.get("/api/models/").get_json()["models"]
    assert (listed["latest_version"], listed["last_version"]) == (1, 2)
    newer = root.register_model(data=tiny_onnx(4.0))  # a new plain version moves latest
    assert root.http.get("/api/models/tiny/versions/latest").get_json()["version"] == newer["version"]
