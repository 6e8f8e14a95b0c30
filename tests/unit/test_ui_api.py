"""The web UI's routes on the root (``root_orchestrator.api.ui``) through Flask's test client, with a
fake cluster client answering nodes and deployment views; and the pure views it shapes
(``root_orchestrator.ui_views``)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from root_orchestrator import ui_views
from root_orchestrator.api.ui import STATIC_DIR, FleetCache
from root_orchestrator.stores import open_stores
from tests.unit.test_root_api import FakeClusterClient, Root, ml_sla, tiny_onnx
from treeline_common.errors import Unavailable

NODE_A = {"node_id": "n-a", "name": "rpi4-1", "profile": "rpi4", "arch": "aarch64", "online": True,
          "emulated": True, "last_seen": 98.0, "memory_limit_mb": 4096, "cpu_count": 4,
          "telemetry": {"cpu_percent": 41.26, "memory_percent": 12.0, "gpus": [],
                        "battery": {"percent": 63.0, "charging": False, "emulated": True},
                        "power": {"watts": 4.2, "source": "profile", "estimated": True},
                        "temperatures_c": {"cpu": 51.5}, "stages": ["s-0/1/0"],
                        "links": [{"peer": "n-b", "rtt_ms": 1.234, "mbps": 48.76, "source": "probe"}],
                        "sources": {"battery": "absent", "power": "emulated", "cpu": "ok"}}}
NODE_B = {"node_id": "n-b", "name": "server-1", "profile": "server", "online": False, "last_seen": 50.0,
          "telemetry": {"cpu_percent": 3.0, "gpus": [{"name": "A100", "utilization_percent": 7.0,
                                                     "temperature_c": 60.0}],
                        "power": {"watts": 100.0, "source": "rapl"}, "sources": {}}}


class UiClusters(FakeClusterClient):
    """Answers nodes per cluster URL (an exception raises) and one deployment view."""

    def __init__(self) -> None:
        super().__init__()
        self.node_answers: dict[str, Any] = {}
        self.node_calls = 0
        self.view: dict[str, Any] = {}

    def nodes(self, cluster_url: str) -> list[dict[str, Any]]:
        self.node_calls += 1
        answer = self.node_answers.get(cluster_url, [])
        if isinstance(answer, Exception):
            raise answer
        return list(answer)

    def deployment(self, cluster_url: str, service_id: str, instance: int) -> dict[str, Any]:
        return self.view


@pytest.fixture
def root(mongo_url: str) -> Iterator[Root]:
    stores = open_stores(mongo_url)
    yield Root(stores, clusters=UiClusters())
    stores.close()


def test_the_page_and_its_files_are_served_without_a_token(root: Root) -> None:
    anonymous = root.client()
    assert anonymous.get("/").headers["Location"].endswith("/ui/")
    page = anonymous.get("/ui/")
    assert page.status_code == 200 and "text/html" in page.content_type
    html = page.get_data(as_text=True)
    for src in re.findall(r'(?:src|href)="(/ui/static/[^"]+)"', html):  # every file the page loads exists
        assert anonymous.get(src).status_code == 200, src
    assert anonymous.get("/ui/static/nope.js").status_code == 404
    assert anonymous.get("/ui/static/../../app.py").status_code == 404
    example = anonymous.get("/ui/examples/mobilenet_v2.json")
    assert example.status_code == 200 and example.get_json()["sla_version"] == "v2.0"
    licences = {p.name for p in (STATIC_DIR / "vendor").iterdir()}
    assert {"LICENSE.alpinejs", "LICENSE.uPlot"} <= licences


def test_overview_needs_a_token_and_lists_clusters_nodes_and_problems(root: Root) -> None:
    assert root.client().get("/api/ui/overview").status_code == 401
    clusters: Any = root.clusters
    clusters.node_answers = {"http://a:1": [NODE_A, NODE_B], "http://b:1": Unavailable("cluster b is down")}
    root.register_cluster("a", "http://a:1", active_nodes=1, total_nodes=2)
    root.register_cluster("b", "http://b:1", active_nodes=0)
    root.clock.advance(100.0 - root.clock.now())
    body = root.http.get("/api/ui/overview").get_json()
    by_name = {c["cluster_name"]: c for c in body["clusters"]}
    assert by_name["a"]["problem"] is None and by_name["a"]["active_nodes"] == 1
    assert by_name["b"]["problem"] == "cluster b is down"
    rpi, server = body["nodes"]
    assert (rpi["name"], rpi["cluster_name"], rpi["online"], server["online"]) == ("rpi4-1", "a", True, False)
    assert rpi["emulated_readings"] == ["power", "battery"]  # the profile's power, and an emulated battery
    assert (rpi["cpu_percent"], rpi["battery_percent"], rpi["temperature_c"]) == (41.3, 63.0, 51.5)
    assert rpi["links"] == [{"peer": "n-b", "rtt_ms": 1.23, "mbps": 48.8, "source": "probe"}]
    assert (rpi["telemetry_age_s"], server["telemetry_age_s"]) == (2.0, 50.0)
    assert (server["gpu"], server["gpu_percent"], server["temperature_c"]) == ("A100", 7.0, 60.0)
    assert server["battery_percent"] is None and server["memory_percent"] is None  # absent, never 0


def test_overview_asks_each_cluster_once_per_period(root: Root) -> None:
    clusters: Any = root.clusters
    clusters.node_answers = {"http://a:1": [NODE_A]}
    root.register_cluster("a", "http://a:1", active_nodes=1)
    for _ in range(5):
        assert len(root.http.get("/api/ui/overview").get_json()["nodes"]) == 1
    assert clusters.node_calls == 1


def test_fleet_cache_refreshes_after_its_ttl_and_on_another_cluster_set() -> None:
    now = [0.0]
    calls: list[str] = []

    def fetch(url: str) -> list[dict[str, Any]]:
        calls.append(url)
        if url == "http://bad":
            raise RuntimeError("boom")
        return [{"node_id": url}]

    cache = FleetCache(fetch, ttl_s=1.0, monotonic=lambda: now[0])
    assert cache.nodes(["http://a"]) == {"http://a": ([{"node_id": "http://a"}], None)}
    now[0] = 0.5
    cache.nodes(["http://a"])
    assert calls == ["http://a"]
    now[0] = 1.5
    cache.nodes(["http://a"])
    found = cache.nodes(["http://a", "http://bad"])
    assert found["http://bad"] == ([], "RuntimeError: boom")
    assert calls == ["http://a", "http://a", "http://a", "http://bad"]


def _deployed(root: Root, owner_http: Any = None) -> str:
    http = owner_http or root.http
    registered = http.post("/api/models/tiny/versions", data=tiny_onnx(), content_type="application/octet-stream")
    assert registered.status_code == 201, registered.get_json()
    cid = root.register_cluster("a", "http://a:1", active_nodes=2)
    r = http.post("/api/application/", json=ml_sla())
    sid = r.get_json()[0]["microservices"][0]
    assert http.post(f"/api/service/{sid}/instance").status_code == 200
    stages = [{"index": 0, "node_id": "n-a", "node_name": "rpi4-1", "endpoint": "tcp://x:1", "stage_key": "k0",
               "inputs": ["x"], "outputs": ["r"], "sha256": "a" * 64, "flops": 8, "cut_bytes": 4096,
               "predicted_compute_ms": 2.0},
              {"index": 1, "node_id": "n-b", "node_name": "server-1", "endpoint": "tcp://x:2", "stage_key": "k1",
               "inputs": ["r"], "outputs": ["y"], "sha256": "b" * 64, "flops": 8, "cut_bytes": 0,
               "predicted_compute_ms": 1.0}]
    placement = {"deployment_id": f"{sid}-0", "generation": 3, "strategy": "optimal", "stages": stages,
                 "predicted": {"latency_ms": 3.5, "throughput_rps": 500.0, "energy_mj": 9.0}}
    explanation = {"plan": {"stages": [{"index": 0, "start": 0, "end": 1}, {"index": 1, "start": 1, "end": 2}]},
                   "scores": {"n-a": {"total": 80.0, "by_plugin": {"compute": 50.0}}}}
    replan = {"ts": 10.0, "kind": "replan", "cause": "node n-c offline", "generation": 3}
    push = {"aggregate": {"active_nodes": 2},
            "jobs": [{"service_id": sid, "instance": 0, "status": "RUNNING", "placement": placement,
                      "explanation": explanation, "events": [replan]}]}
    assert root.http.post(f"/api/information/{cid}", json=push).status_code == 200
    return sid


def test_service_detail_draws_the_strip_and_sets_measured_against_predicted(root: Root) -> None:
    clusters: Any = root.clusters
    clusters.node_answers = {"http://a:1": [NODE_A, NODE_B]}
    clusters.view = {"measured": [{"stage": 0, "requests": 40, "compute_ms_mean": 2.5, "compute_ms_window": 2.2,
                                   "e2e_requests": 40, "e2e_ms_mean": 9.5},
                                  {"stage": 1, "requests": 40, "compute_ms_mean": 1.1}]}
    sid = _deployed(root)
    body = root.http.get(f"/api/ui/service/{sid}").get_json()
    strip = body["strip"]
    assert strip["total_ops"] == 2 and [(s["start"], s["end"], s["node_name"]) for s in strip["stages"]] == [
        (0, 1, "rpi4-1"), (1, 2, "server-1")]
    assert body["links"] == [{"from": "rpi4-1", "to": "server-1", "cut_bytes": 4096, "measured": True,
                              "mbps": 48.8, "rtt_ms": 1.23}]
    measured = body["measured"]
    assert [m["measured_ms"] for m in measured["stages"]] == [2.2, 1.1]  # the window wins over the mean
    assert measured["compute_ms"] == 3.3 and measured["requests"] == 40
    assert (measured["e2e_requests"], measured["e2e_ms_mean"]) == (40, 9.5)  # the entry's own timing
    assert measured["energy_mj"] == round(4.2 * 2.2 + 100.0 * 1.1, 2) and measured["energy_estimated"]
    assert "replan" in [e["kind"] for e in body["events"]] and body["problem"] is None
    assert body["training"] is None  # an ml-model service has no training section


def test_service_detail_says_why_measured_figures_are_missing(root: Root) -> None:
    sid = _deployed(root)
    clusters: Any = root.clusters

    def down(*_: Any) -> dict[str, Any]:
        raise Unavailable("cluster a unreachable")

    clusters.deployment = down
    body = root.http.get(f"/api/ui/service/{sid}").get_json()
    assert body["problem"] == "cluster a unreachable" and body["measured"]["compute_ms"] is None


def test_other_users_deployments_are_not_shown(root: Root) -> None:
    alice = root.login_as(root.add_user("alice"))
    bob = root.login_as(root.add_user("bob"))
    sid = _deployed(root, alice)
    assert [s["service_id"] for s in alice.get("/api/ui/overview").get_json()["services"]] == [sid]
    assert bob.get("/api/ui/overview").get_json()["services"] == []
    assert bob.get(f"/api/ui/service/{sid}").status_code == 404
    assert alice.get(f"/api/ui/service/{sid}").status_code == 200


def test_views_keep_absent_readings_absent() -> None:
    row = ui_views.node_row({"node_id": "x", "telemetry": {}}, {"cluster_name": "c"}, now=10.0)
    assert all(row[k] is None for k in ("cpu_percent", "gpu", "battery_percent", "temperature_c", "power_w",
                                        "telemetry_age_s"))
    empty = ui_views.measured_view([{"index": 0, "node_id": "x", "predicted_compute_ms": 1.0}], [], [])
    assert empty["compute_ms"] is None and empty["energy_mj"] is None
    unserved = ui_views.measured_view([{"index": 0, "node_id": "x"}], [{"stage": 0, "requests": 0,
                                                                      "compute_ms_mean": 0.0}], [])
    assert unserved["stages"][0]["measured_ms"] is None  # a stage that served nothing measured nothing
    assert ui_views.strip({}, None) == {"total_ops": 0, "stages": [], "strategy": None, "generation": None,
                                        "predicted": {}}
    assert Path(STATIC_DIR / "index.html").exists()


def test_an_unreachable_cluster_keeps_its_last_nodes_as_unknown(root: Root) -> None:
    clusters: Any = root.clusters
    clusters.node_answers = {"http://a:1": [NODE_A]}
    root.register_cluster("a", "http://a:1", active_nodes=1)
    assert root.http.get("/api/ui/overview").get_json()["nodes"][0]["state"] == "online"
    clusters.node_answers = {"http://a:1": Unavailable("HTTPConnectionPool(host='a', port=1): Max retries "
                                                       "exceeded ([Errno 111] Connection refused)")}
    root.clock.advance(2.0)
    fleet: Any = root.app.extensions["treeline_ui_fleet"]
    fleet._ttl = 0.0  # the next call asks again
    body = root.http.get("/api/ui/overview").get_json()
    [node] = body["nodes"]
    assert (node["name"], node["state"], node["online"]) == ("rpi4-1", "unknown", False)
    assert body["clusters"][0]["problem"] == "not reachable (connection refused)"


def test_links_show_the_newest_measurement_per_peer() -> None:
    links = [{"peer": "b", "rtt_ms": 5.0, "mbps": 40.0, "source": "probe", "measured_at": 10.0},
             {"peer": "b", "rtt_ms": 4.0, "mbps": 47.5, "source": "passive", "measured_at": 12.0},
             {"peer": "a", "rtt_ms": 1.0, "mbps": 900.0, "source": "probe", "measured_at": 1.0}]
    row = ui_views.node_row({"node_id": "x", "online": True, "telemetry": {"links": links}}, {}, now=20.0)
    assert row["links"] == [{"peer": "a", "rtt_ms": 1.0, "mbps": 900.0, "source": "probe"},
                            {"peer": "b", "rtt_ms": 4.0, "mbps": 47.5, "source": "passive"}]


def test_the_overview_admits_no_cluster_token() -> None:
    from root_orchestrator.api.ui import overview
    from root_orchestrator.api.guard import access_of

    rule = access_of(overview)
    assert rule is not None and not rule.clusters and not rule.legacy and not rule.public
