"""A private service end to end: tensors encrypted between nodes (CURVE), callers sign with the
service's caller key, which only its owner reads from the root; unsigned callers are refused."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from treeline_test_helpers import ort_run, tiny_mlp

from node_engine.data_plane.client import DataPlaneError, TensorClient
from treeline_cli.inference import run_requests, service_resolver
from treeline_cli.root_client import RootClient
from treeline_cli.stack import Stack, StackConfig, pick_ports, start_stack

pytestmark = pytest.mark.integration

INPUT = "input"


def tiny_model() -> bytes:
    return tiny_mlp(3, INPUT)


def private_sla() -> dict[str, Any]:
    model = {"name": "secret-tiny", "version": "latest",
             "input": {"name": INPUT, "shape": [1, 8], "dtype": "float32"},
             "max_partitions": 2, "scheduler_profile": "flops-balanced",  # two stages on two nodes
             "privacy": {"encrypt_tensors": True}}
    service = {"microservice_name": "vault", "microservice_namespace": "e2e", "virtualization": "ml-model",
               "memory": 64, "vcpus": 1, "model": model, "constraints": []}
    return {"sla_version": "v2.0", "customerID": "Admin",
            "applications": [{"application_name": "private", "application_namespace": "e2e",
                              "application_desc": "private e2e", "microservices": [service]}]}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    config = pick_ports(StackConfig(data_dir=tmp_path_factory.mktemp("stack"), nodes=2,
                                    profiles=("server", "server"), telemetry_interval=1.0, node_threads=1,
                                    node_labels={}))
    running = start_stack(config)
    try:
        running.wait_ready(timeout=60)
        yield running
    finally:
        running.stop()


def test_private_service_encrypts_signs_and_refuses_unsigned_callers(stack: Stack) -> None:
    root = RootClient(stack.root_url)
    model = tiny_model()
    root.register_model("secret-tiny", model)
    [application] = root.submit_sla(private_sla())
    [service_id] = application["microservices"]
    root.deploy_service(service_id)
    service = root.wait_deployed(service_id, timeout=90)
    placement = service["placement"]
    assert len({s["node_id"] for s in placement["stages"]}) == 2  # one hop between nodes, encrypted
    key = service.get("caller_key") or ""
    assert len(key) == 64, "the owner reads the caller key of a service whose callers sign"

    # signed callers are answered, with the whole model's result
    report = run_requests(placement, 8, resolver=service_resolver(stack.root_url, service_id), timeout=20)
    assert report.requests == 8 and report.failed == 0, report.errors
    x = np.random.default_rng(0).standard_normal((1, 8)).astype(np.float32)
    expected = ort_run(model, {INPUT: x}, ("output",))["output"]
    entry = placement["entry"]
    with TensorClient(entry["endpoint"], key=key) as client:
        outputs, _ = client.infer(entry["stage_key"], {INPUT: x}, timeout=10)
        np.testing.assert_allclose(outputs["output"], expected, rtol=1e-5, atol=1e-5)
    with TensorClient(entry["endpoint"]) as client, pytest.raises(DataPlaneError, match="not signed"):
        client.infer(entry["stage_key"], {INPUT: x}, timeout=10)  # an unsigned caller is refused
    # nobody outside the deployment may send to the inner stage, signed with the caller key or not
    inner = placement["stages"][1]
    with TensorClient(inner["endpoint"], key=key) as client, pytest.raises(DataPlaneError):
        client.infer(inner["stage_key"], {"r": np.zeros((1, 16), np.float32)}, timeout=10)
