"""The Prometheus collectors of the root, the cluster and the node engine (issue 12, item 2).

Each process object has its own registry: two of them never share a series. The integration
test ``tests/integration/test_metrics_stack.py`` scrapes a real stack.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import pytest
import requests
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from cluster_orchestrator.metrics import ClusterMetrics, cause_kind, node_series
from node_engine.config import METRICS_PORT_ENV, parse_args
from node_engine.data_plane.server import Held
from node_engine.metrics import NodeMetrics
from node_engine.stages import LoadedStage, StageTable
from root_orchestrator.metrics import tally_events
from root_orchestrator.stores import open_stores
from tests.unit.test_root_api import Root


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """``{(sample name, sorted labels): value}`` of a text exposition."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(found: Mapping[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return found[(name, tuple(sorted(labels.items())))]


# -- cluster ------------------------------------------------------------------------------------

@pytest.mark.parametrize(("cause", "kind"), [
    ("new deployment", "new"),
    ("resumed after a restart", "resumed"),
    ("retry", "retry"),
    ("node pi-1, pi-2 offline", "node_offline"),
    ("node jetson joined", "node_joined"),
    ("capacity returned: pi-3 online", "capacity_returned"),
    ("node pi-1 serves at a new address", "node_moved"),
    ("a rollout was interrupted: starting its canary again", "rollout_interrupted"),
    ("measured stage times drifted from the plan for 31 s", "drift"),
    ("something new", "other"),
])
def test_cause_kinds_are_bounded(cause: str, kind: str) -> None:
    assert cause_kind(cause) == kind


def test_node_series_counts_states_and_ages() -> None:
    nodes = [{"node_id": "n1", "name": "a", "online": True, "last_seen": 95.0},
             {"node_id": "n2", "name": "b", "online": False, "last_seen": 40.0},
             {"node_id": "n3", "name": "c", "online": False, "last_seen": None}]
    states, ages = node_series(nodes, 100.0)
    assert states == {"online": 1, "offline": 2}
    assert ages == [("n1", "a", 5.0), ("n2", "b", 60.0)]


def test_cluster_metrics_read_the_state_at_scrape_time() -> None:
    nodes: list[dict[str, Any]] = [{"node_id": "n1", "name": "a", "online": True, "last_seen": 9.0}]
    deployments: list[dict[str, Any]] = [
        {"deployment_id": "d1", "status": "RUNNING", "rollout": {"phase": "canary", "share": 0.1}},
        {"deployment_id": "d2", "status": "FAILED", "rollout": None}]
    drops = {"bad_payload": 2}
    metrics = ClusterMetrics(lambda: nodes, lambda: deployments, lambda: 10.0, lambda: drops)
    metrics.attempt_done("node pi-1 offline", False, 1.5)
    found = samples(metrics.exposition()[0].decode())
    assert value(found, "treeline_cluster_nodes", state="online") == 1
    assert value(found, "treeline_cluster_nodes", state="offline") == 0
    assert value(found, "treeline_cluster_telemetry_age_seconds", node_id="n1", node="a") == 1.0
    assert value(found, "treeline_cluster_deployments", status="RUNNING") == 1
    assert value(found, "treeline_cluster_rollout", deployment_id="d1", phase="canary") == 1
    assert value(found, "treeline_cluster_rollout_share", deployment_id="d1") == 0.1
    assert ("treeline_cluster_rollout", (("deployment_id", "d2"), ("phase", "canary"))) not in found
    assert value(found, "treeline_cluster_mqtt_dropped_messages_total", reason="bad_payload") == 2
    assert value(found, "treeline_cluster_replans_total", cause="node_offline") == 1
    assert value(found, "treeline_cluster_deploy_attempt_seconds_count", cause="node_offline") == 1
    assert value(found, "treeline_cluster_deploy_attempt_seconds_sum", cause="node_offline") == 1.5
    nodes[0]["online"] = False  # read again at the next scrape: no gauge to keep in step
    drops["handler_error"] = 1
    found = samples(metrics.exposition()[0].decode())
    assert value(found, "treeline_cluster_nodes", state="offline") == 1
    assert value(found, "treeline_cluster_mqtt_dropped_messages_total", reason="handler_error") == 1


def test_two_clusters_have_their_own_registries() -> None:
    one = ClusterMetrics(list, list, lambda: 0.0)
    two = ClusterMetrics(list, list, lambda: 0.0)
    one.attempt_done("retry", False, 0.2)
    retries = ("treeline_cluster_replans_total", (("cause", "retry"),))
    assert retries in samples(one.exposition()[0].decode())
    assert retries not in samples(two.exposition()[0].decode())


# -- node ---------------------------------------------------------------------------------------

class _Session:
    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"y": np.asarray(inputs["x"]) * 2}

    def close(self) -> None:
        pass


class _Plane:
    def __init__(self) -> None:
        self.in_flight = 3
        self.codes: dict[str, int] = {"overloaded": 4}

    def held(self) -> Held:
        return Held(self.in_flight, 1, 2)

    def errors(self) -> dict[str, int]:
        return dict(self.codes)


def test_node_metrics_time_each_stage_and_read_the_ledger() -> None:
    stages = StageTable()
    stage = LoadedStage(key="dep-1/1/0", deployment_id="dep-1", index=0, sha256="0" * 64, generation=1,
                        session=_Session(), next=None)
    stages.put(stage)
    metrics = NodeMetrics(stages)
    plane = _Plane()
    metrics.attach(plane)
    runner = metrics.runner()
    for _ in range(3):
        outputs, _ms = runner.run(stage, {"x": np.ones(2, dtype=np.float32)})
    assert outputs["y"].tolist() == [2.0, 2.0]
    found = samples(generate_latest(metrics.registry).decode())
    assert value(found, "treeline_node_stage_latency_seconds_count", stage="dep-1/1/0") == 3
    assert value(found, "treeline_node_stage_requests_total", stage="dep-1/1/0") == 3
    assert value(found, "treeline_node_requests_in_flight") == 3
    assert value(found, "treeline_node_awaiting_answer") == 2
    assert value(found, "treeline_node_errors_total", code="overloaded") == 4
    assert value(found, "treeline_node_stages_loaded") == 1
    plane.in_flight = 0
    assert value(samples(generate_latest(metrics.registry).decode()), "treeline_node_requests_in_flight") == 0


def test_node_metrics_serve_on_a_free_port() -> None:
    metrics = NodeMetrics(StageTable())
    url = metrics.serve(0, "127.0.0.1", _Plane())
    try:
        answer = requests.get(url, timeout=5)
        assert answer.status_code == 200
        assert value(samples(answer.text), "treeline_node_requests_in_flight") == 3
    finally:
        metrics.close()
    metrics.close()  # idempotent


def test_the_metrics_port_option(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["--cluster-url", "http://c:1", "--name", "n1"]
    monkeypatch.delenv(METRICS_PORT_ENV, raising=False)
    assert parse_args(base).metrics_port is None  # off unless asked for
    assert parse_args([*base, "--metrics-port", "0"]).metrics_port == 0
    monkeypatch.setenv(METRICS_PORT_ENV, "9464")
    assert parse_args(base).metrics_port == 9464
    assert parse_args([*base, "--metrics-port", "9100"]).metrics_port == 9100  # the flag wins
    for bad_env, bad_args, named in (("ninety", [], METRICS_PORT_ENV), ("", ["--metrics-port", "-1"],
                                                                          "--metrics-port")):
        monkeypatch.setenv(METRICS_PORT_ENV, bad_env)
        with pytest.raises(SystemExit) as stopped:
            parse_args([*base, *bad_args])
        assert stopped.value.code == 2
        assert named in capsys.readouterr().err


# -- root ---------------------------------------------------------------------------------------

def test_tally_events_counts_instances_rollouts_and_moves() -> None:
    services = [{"instances": [
        {"status": "RUNNING", "events": [{"kind": "rollout_requested"}, {"kind": "moved"},
                                         {"kind": "rollout_started"}, {"kind": "rollout_requested"}]},
        {"status": "FAILED", "events": [{"kind": "cluster_choice"}]}]},
        {"instances": [{"status": "RUNNING"}]}, {}]
    statuses, rollouts, moves = tally_events(services)
    assert statuses == {"RUNNING": 2, "FAILED": 1}
    assert rollouts == {"rollout_requested": 2, "rollout_started": 1}
    assert moves == 1


@pytest.fixture
def root(mongo_url: str) -> Iterator[Root]:
    stores = open_stores(mongo_url)
    yield Root(stores)
    stores.close()


def test_root_metrics_need_an_internal_credential(root: Root) -> None:
    assert root.client().get("/metrics").status_code == 401
    assert root.login_as(root.add_user("dev")).get("/metrics").status_code == 403  # application provider
    assert root.cluster_client().get("/metrics").status_code == 200


def test_root_metrics_count_requests_and_read_the_stores(root: Root) -> None:
    root.register_cluster("c1", "http://127.0.0.1:9")
    root.register_model()
    root.submit()
    for _ in range(2):
        assert root.http.get("/api/health").status_code == 200
    answer = root.http.get("/metrics")
    assert answer.status_code == 200
    assert answer.content_type.startswith("text/plain")
    found = samples(answer.get_data(as_text=True))
    assert value(found, "treeline_root_http_request_duration_seconds_count",
                 route="/api/health", method="GET", status="200") == 2
    assert value(found, "treeline_root_applications") == 1
    assert sum(v for (name, _), v in found.items() if name == "treeline_root_services") == 1
    assert value(found, "treeline_root_clusters") == 1
    assert value(found, "treeline_root_clusters_active") == 1
    assert value(found, "treeline_root_failover_moves") == 0
    refused = root.client().get("/metrics")  # refused by the guard, and timed all the same
    assert refused.status_code == 401
    found = samples(root.http.get("/metrics").get_data(as_text=True))
    assert value(found, "treeline_root_http_request_duration_seconds_count",
                 route="/metrics", method="GET", status="401") == 1
