"""The walking skeleton end to end: real broker, root, cluster and 3 node engines as
separate processes; MobileNetV2 deployed in 3 partitions; outputs equal the whole model."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from treeline_cli.broker import BrokerProcess
from treeline_cli.inference import random_inputs
from treeline_cli.root_client import RootClient
from treeline_cli.stack import Stack, StackConfig, pick_ports, start_stack

pytestmark = pytest.mark.integration

EXAMPLE = Path(__file__).resolve().parents[2] / "deployment_descriptors" / "examples" / "mobilenet_v2.json"


@pytest.fixture(scope="module")
def mobilenet_onnx(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    pytest.importorskip("torch")
    import model_zoo

    return model_zoo.cached_onnx("mobilenet_v2", tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def stack(mqtt_broker: BrokerProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    config = pick_ports(StackConfig(data_dir=tmp_path_factory.mktemp("stack"), nodes=3, mqtt_url=mqtt_broker.url,
                                    telemetry_interval=1.0))
    running = start_stack(config)
    try:
        running.wait_ready(timeout=60)
        yield running
    finally:
        running.stop()
        assert all(not p.alive() for p in running.processes), "a child outlived Stack.stop()"


def test_three_partitions_match_whole_model(stack: Stack, mobilenet_onnx: bytes) -> None:
    import onnxruntime as ort

    from node_engine.data_plane.client import TensorClient

    # Prepare
    client = RootClient(stack.root_url)
    client.register_model("mobilenet_v2", mobilenet_onnx)
    sla = json.loads(EXAMPLE.read_text())

    # Execute
    [application] = client.submit_sla(sla)
    [service_id] = application["microservices"]
    client.deploy_service(service_id)
    service = client.wait_deployed(service_id, timeout=120)

    # Assert: three stages on three different nodes, chained through the data plane
    placement = service["placement"]
    stages = placement["stages"]
    assert [s["index"] for s in stages] == [0, 1, 2]
    assert len({s["node_id"] for s in stages}) == 3
    assert all(s["cut_bytes"] > 0 for s in stages[:-1]) and stages[-1]["cut_bytes"] == 0

    whole = ort.InferenceSession(mobilenet_onnx, providers=["CPUExecutionProvider"])
    inputs = list(random_inputs(placement["input"], 20, seed=3))
    with TensorClient(placement["entry"]["endpoint"]) as tensor_client:
        for sample in inputs:
            outputs, timings = tensor_client.infer(placement["entry"]["stage_key"], sample, timeout=30)
            expected = whole.run(None, sample)[0]
            got = outputs[placement["outputs"][0]]
            assert got.shape == expected.shape
            np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
            assert set(timings) == {s["stage_key"] for s in stages}


def test_bad_descriptor_is_rejected_with_paths(stack: Stack) -> None:
    import requests

    sla = json.loads(EXAMPLE.read_text())
    sla["applications"][0]["microservices"][0]["model"]["max_partitions"] = 0
    response = requests.post(f"{stack.root_url}/api/application/", json=sla, timeout=10)
    assert response.status_code == 400
    details = response.json()["error"]["details"]
    assert any(d["path"] == "applications[0].microservices[0].model.max_partitions" for d in details)
