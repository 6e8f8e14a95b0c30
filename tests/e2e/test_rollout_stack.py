"""Canary rollouts through a real stack (broker, root, cluster, 2 node engines as processes).

v1 serves while a caller thread sends requests through its entry (ServiceClient, re-resolving
through the root). v2 (the same function, another graph) is registered and the SLA re-applied:
the entry hands a share of its requests to v2, the checks pass, v2 is promoted. v3 (its answers
rank the classes the other way round) is registered and the SLA re-applied: the probe disagrees
and v3 is rolled back within 10 s. No request of the caller fails at any point, and every step
is an event on the service.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper
from treeline_test_helpers import running_stack

from node_engine.data_plane.service_client import RetryPolicy, ServiceClient
from treeline_cli.inference import service_resolver
from treeline_cli.root_client import RootClient
from treeline_cli.stack import Stack

pytestmark = pytest.mark.integration
OPSET = [helper.make_opsetid("", 17)]
DEADLINE_S = 90.0


def scaled(factor: float, via_add: bool = False) -> bytes:
    """``y = factor * x`` for ``x[1, 4]`` (``x + x`` when ``via_add``: the same answers, another graph)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    if via_add:
        graph = helper.make_graph([helper.make_node("Add", ["x", "x"], ["y"], name="add")], "twice", [x], [y])
    else:
        weight = numpy_helper.from_array(np.array(factor, dtype=np.float32), "k")
        graph = helper.make_graph([helper.make_node("Mul", ["x", "k"], ["y"], name="mul")], "scale", [x], [y],
                                  [weight])
    return helper.make_model(graph, opset_imports=OPSET).SerializeToString()


def sla() -> dict[str, Any]:
    return {"sla_version": "v2.0", "customerID": "Admin", "applications": [{
        "applicationID": "", "application_name": "rollout", "application_namespace": "demo",
        "application_desc": "canary", "microservices": [{
            "microserviceID": "", "microservice_name": "m", "microservice_namespace": "demo",
            "virtualization": "ml-model", "memory": 128, "vcpus": 1,
            "model": {"name": "scaler", "version": "latest",
                      "inputs": [{"name": "x", "shape": [1, 4], "dtype": "float32"}],
                      "rollout": {"canary_share": 0.3, "min_requests": 12, "probe": 4, "timeout_s": 40}},
            "constraints": [], "connectivity": []}]}]}


class Traffic:
    """Sends requests to the service from a thread until stopped; counts answers per factor and failures."""

    def __init__(self, root_url: str, service_id: str) -> None:
        self._client_args = (root_url, service_id)
        self.stop = threading.Event()
        self.answered: dict[float, int] = {}
        self.failures: list[str] = []
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        resolve = service_resolver(*self._client_args)
        sample = np.array([[1.0, 2.0, 3.0, 4.0]], dtype=np.float32)
        with ServiceClient(resolve, policy=RetryPolicy(deadline=20.0, attempt_timeout=3.0)) as client:
            while not self.stop.is_set():
                try:
                    outputs, _ = client.infer({"x": sample})
                except Exception as exc:  # noqa: BLE001 - every failure is counted
                    self.failures.append(str(exc))
                    continue
                factor = round(float(outputs["y"][0, 0]), 3)
                self.answered[factor] = self.answered.get(factor, 0) + 1

    def total(self) -> int:
        return sum(self.answered.values())


def wait_for_event(root: RootClient, service_id: str, kind: str, after: float) -> dict[str, Any]:
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        found = [e for e in root.service_events(service_id) if e.get("kind") == kind and e["ts"] >= after]
        if found:
            return found[-1]
        time.sleep(0.2)  # polling the root API with a deadline
    raise AssertionError(f"no {kind} event within {DEADLINE_S} s: {root.service_events(service_id)[-8:]}")


def wait_until(predicate: Any, what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(tmp_path_factory.mktemp("stack"), nodes=2, profiles=("server", "server"),
                       telemetry_interval=0.5, node_threads=1, node_labels={}) as running:
        yield running


def test_a_new_version_is_promoted_and_a_disagreeing_one_rolled_back_without_failed_requests(
        stack: Stack, tmp_path: Path) -> None:
    root = RootClient(stack.root_url)
    root.register_model("scaler", scaled(2.0))
    [application] = root.apply(sla())
    [service_id] = application["microservices"]
    root.deploy_service(service_id)
    first = root.wait_deployed(service_id, timeout=DEADLINE_S)
    traffic = Traffic(stack.root_url, service_id)
    traffic.thread.start()
    try:
        wait_until(lambda: traffic.total() >= 20, "no traffic through v1")
        root.register_model("scaler", scaled(2.0, via_add=True))
        since = time.time()
        [row] = root.apply(sla())
        assert row["action"] == "updated" and row["redeployed"][0]["rollout"] is True
        promoted = wait_for_event(root, service_id, "promoted", since)
        assert promoted["figures"]["live_requests"] > 0, promoted  # the entry routed live requests to v2
        wait_until(lambda: root.service(service_id)["placement"]["generation"]
                   > first["placement"]["generation"], "placement not switched to v2")
        kinds = [e["kind"] for e in root.service_events(service_id) if e["ts"] >= since]
        assert kinds.index("rollout_started") < kinds.index("canary_share") < kinds.index("promoted"), kinds

        root.register_model("scaler", scaled(-2.0))  # the argmax moves: it disagrees
        since = time.time()
        root.apply(sla())
        rolled_back = wait_for_event(root, service_id, "rolled_back", since)
        assert "disagrees" in rolled_back["reason"], rolled_back
        assert rolled_back["canary_s"] <= 10.0, rolled_back
        served = root.service(service_id)
        assert served["status"] == "RUNNING" and "rolled back" in served["status_detail"]
        before = traffic.total()
        wait_until(lambda: traffic.total() >= before + 10, "no traffic after the rollback")
    finally:
        traffic.stop.set()
        traffic.thread.join(30)
    assert traffic.failures == [], traffic.failures[:3]
    assert traffic.answered.get(2.0, 0) > 20 and set(traffic.answered) <= {2.0, -2.0}, traffic.answered
