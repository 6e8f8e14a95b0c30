"""Prometheus ``/metrics`` on a real stack (issue 12, item 2): broker, root, one cluster and two
node engines as processes, started with ``TREELINE_NODE_METRICS_PORT=0`` (each node picks a
free port and logs it). A tiny two-layer model is deployed; the root's, the cluster's and each
node's ``/metrics`` must parse and carry the named series, and the stage latency histogram, the
node's error counts and the root's request counter must move under traffic.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families
from treeline_test_helpers import mqtt_client, running_stack

from cluster_orchestrator.mqtt_bus import MqttBus
from node_engine.data_plane.client import DataPlaneError, TensorClient
from tests.e2e.test_model_intake_stack import conv_model, sla
from treeline_cli.broker import BrokerProcess
from treeline_cli.root_client import DEV_ACCOUNT, RootClient, login
from treeline_cli.stack import Stack
from treeline_common import messages, topics
from treeline_common.tensor_wire import UNKNOWN_STAGE

pytestmark = pytest.mark.integration
METRICS_LINE = re.compile(r"metrics \(Prometheus\) on (http://\S+/metrics)")
DEADLINE = 30.0

ROOT_SERIES = {"treeline_root_http_request_duration_seconds", "treeline_root_applications",
               "treeline_root_services", "treeline_root_instances", "treeline_root_clusters_active",
               "treeline_root_rollout_events", "treeline_root_failover_moves"}
CLUSTER_SERIES = {"treeline_cluster_nodes", "treeline_cluster_telemetry_age_seconds",
                  "treeline_cluster_deployments", "treeline_cluster_replans",
                  "treeline_cluster_deploy_attempt_seconds", "treeline_cluster_rollout",
                  "treeline_cluster_mqtt_dropped_messages"}
NODE_SERIES = {"treeline_node_stage_latency_seconds", "treeline_node_requests_in_flight",
               "treeline_node_errors", "treeline_node_stage_requests"}


def scrape(url: str, token: str | None = None) -> dict[str, list[Any]]:
    """``{family name: [samples]}`` of one scrape."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    answer = requests.get(url, headers=headers, timeout=10)
    assert answer.status_code == 200, answer.text[:500]
    return {f.name: f.samples for f in text_string_to_metric_families(answer.text)}


def total(families: dict[str, list[Any]], sample: str, **labels: str) -> float:
    """Sum of ``sample`` over every sample whose labels include ``labels``."""
    return sum(s.value for samples in families.values() for s in samples
               if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()))


def node_metrics_url(stack: Stack, name: str) -> str:
    """The URL node ``name`` logged (it picked a free port); polls its log up to DEADLINE."""
    log_path = Path(stack.node(name).log_path)
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        found = METRICS_LINE.search(log_path.read_text(errors="replace"))
        if found:
            return found.group(1)
        time.sleep(0.1)  # polling a log file with a deadline (nothing to wait on)
    raise AssertionError(f"node {name} logged no metrics address in {log_path}")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TREELINE_NODE_METRICS_PORT", "0")
        with running_stack(tmp_path_factory.mktemp("stack"), nodes=2, profiles=("server", "server"),
                           telemetry_interval=1.0, node_threads=1, node_labels={}) as running:
            yield running


def test_each_process_serves_its_metrics_and_they_move(stack: Stack) -> None:
    root = RootClient(stack.root_url)
    token = login(stack.root_url, *DEV_ACCOUNT)["token"]
    model = conv_model([1, 3, 16, 16], [1, 4, 16, 16])
    root.register_model("metered", model.SerializeToString())
    [application] = root.submit_sla(sla("metered", "metered", [1, 3, 16, 16], 2))
    [service_id] = application["microservices"]
    root.deploy_service(service_id)
    service = root.wait_deployed(service_id, timeout=120)
    entry = service["placement"]["entry"]

    before = scrape(f"{stack.root_url}/metrics", token)
    assert set(before) >= ROOT_SERIES, sorted(set(before))
    assert total(before, "treeline_root_clusters_active") == 1
    assert total(before, "treeline_root_applications") >= 1
    health = total(before, "treeline_root_http_request_duration_seconds_count", route="/api/health")

    cluster = scrape(f"{stack.cluster_url}/metrics")
    assert set(cluster) >= CLUSTER_SERIES, sorted(set(cluster))
    assert total(cluster, "treeline_cluster_nodes", state="online") == 2
    assert total(cluster, "treeline_cluster_deployments", status="RUNNING") >= 1
    assert total(cluster, "treeline_cluster_replans_total", cause="new") >= 1
    assert total(cluster, "treeline_cluster_deploy_attempt_seconds_count") >= 1
    ages = [s.value for s in cluster["treeline_cluster_telemetry_age_seconds"]]
    assert len(ages) == 2 and all(0 <= age < 30 for age in ages), ages

    urls = {name: node_metrics_url(stack, name) for name in stack.node_names}
    first = {name: scrape(url) for name, url in urls.items()}
    for families in first.values():
        assert set(families) >= NODE_SERIES, sorted(set(families))
    sample = np.random.default_rng(2).standard_normal((1, 3, 16, 16)).astype(np.float32)
    with TensorClient(entry["endpoint"]) as client:
        for _ in range(5):
            client.infer(entry["stage_key"], {"x": sample}, timeout=30)
        with pytest.raises(DataPlaneError):
            client.infer(f"nothing-{uuid.uuid4().hex[:6]}/1/0", {"x": sample}, timeout=30)
    for _ in range(3):
        requests.get(f"{stack.root_url}/api/health", timeout=10)

    after = {name: scrape(url) for name, url in urls.items()}
    runs = {name: total(after[name], "treeline_node_stage_latency_seconds_count")
            - total(first[name], "treeline_node_stage_latency_seconds_count") for name in urls}
    # every stage of the placement ran once per request: 5 requests x the stages, over both nodes
    stages = len(service["placement"]["stages"])
    assert sum(runs.values()) == 5 * stages, runs
    errors = sum(total(after[n], "treeline_node_errors_total", code=UNKNOWN_STAGE) for n in urls)
    assert errors >= 1
    assert all(total(after[n], "treeline_node_requests_in_flight") == 0 for n in urls)
    moved = scrape(f"{stack.root_url}/metrics", token)
    counted = total(moved, "treeline_root_http_request_duration_seconds_count", route="/api/health")
    assert counted == health + 3


class _FailingHandler:
    """A bus handler whose status handler fails (the other handlers are never reached here)."""

    def on_node_status(self, node_id: str, status: messages.NodeStatus) -> None:
        raise RuntimeError("handler broke")

    def __getattr__(self, name: str) -> Any:
        return lambda *args: None


def test_the_cluster_bus_counts_what_it_drops(mqtt_broker: BrokerProcess) -> None:
    """A real broker: a payload that does not decode and one whose handler fails are counted by
    reason (``treeline_cluster_mqtt_dropped_messages_total``)."""
    bus = MqttBus(mqtt_broker.url, _FailingHandler())
    bus.start()
    try:
        assert bus.wait_connected(10)
        client = mqtt_client(mqtt_broker)
        client.publish(topics.information("n-bad"), b"{not json", qos=1).wait_for_publish(5)
        good = messages.encode(messages.NodeStatus("n-ok", "online", 1, 1.0))
        client.publish(topics.status("n-ok"), good, qos=1).wait_for_publish(5)
        deadline = time.monotonic() + DEADLINE
        while bus.dropped() != {"bad_payload": 1, "handler_error": 1} and time.monotonic() < deadline:
            time.sleep(0.05)  # paho's thread counts; poll with a deadline
        assert bus.dropped() == {"bad_payload": 1, "handler_error": 1}
        client.loop_stop()
        client.disconnect()
    finally:
        bus.stop()
