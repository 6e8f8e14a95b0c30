"""Federated training through ``treeline apply`` against a real stack (root, cluster, broker, 5 node engines).

The stack's 5 node engines are labelled ``data:digits``; each gets a non-IID Dirichlet(0.5)
share of digits and the held-out split in its data directory. The parent version is
registered at the root, an ``ml-training`` SLA (FedAvg, 5 rounds) applied with ``treeline
apply`` (the CLI as a process): the root resolves the starting version and forwards the job; the cluster
places the Flower server and clients, runs the job in a worker, records the rounds as service
events and posts the result to the root, which registers it. Checked: the service ends with
the cluster's terminal status (DELETED, "training done: registered ..."), the new version's
lineage names its parent, strategy, rounds, clients and the accuracy per round, and the rounds
appear as the service's events at the root, the final held-out accuracy is within
``GAP_POINTS`` of the same model trained centrally on all five shares, and the registered
version, deployed as an ``ml-model`` service, answers as onnxruntime does on its artifact.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from treeline_test_helpers import run_cli, running_stack

pytest.importorskip("flwr")
pytest.importorskip("torch")

import numpy as np
import onnxruntime as ort

from model_zoo import federated
from node_engine.data_plane.service_client import ServiceClient
from node_engine.training import model as mlp
from treeline_cli.inference import service_resolver
from treeline_cli.root_client import RootClient
from treeline_cli.stack import Stack

pytestmark = pytest.mark.integration

NODES = ("server-1", "server-2", "server-3", "server-4", "server-5")
ROUNDS = 5
LOCAL_EPOCHS, LEARNING_RATE = 5, 0.3
GAP_POINTS = 5.0  # "within a few points of centralised training": FedAvg non-IID wobbles ~2 points round to round
DEADLINE_S = 180.0


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    data = tmp_path_factory.mktemp("fl-stack")
    dirs = [data / "nodes" / name for name in NODES]  # the stack's node data directories
    split = federated.split(federated.load_digits(), len(NODES), alpha=0.5, seed=3)
    federated.write_split(split, data / "fl-split", dirs)
    for d in dirs:
        (d / federated.TEST_FILE).write_bytes((data / "fl-split" / federated.TEST_FILE).read_bytes())
    with running_stack(data, nodes=len(NODES), profiles=("server",), telemetry_interval=0.5, node_threads=1,
                       node_labels=dict.fromkeys(NODES, "data:digits")) as running:
        yield running


def flower_processes(stack: Stack) -> list[int]:
    """Pids of the Flower processes (``python -m node_engine.training.*``) the stack's nodes run."""
    nodes_dir = str(stack.config.data_dir / "nodes")
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info["cmdline"] or []
        flower = any(a.startswith("node_engine.training") for a in cmdline)
        if flower and any(nodes_dir in a for a in cmdline):
            found.append(proc.pid)
    return found


def training_sla(parent: str) -> dict[str, Any]:
    return {"sla_version": "v2.0", "customerID": "Admin", "applications": [{
        "applicationID": "", "application_name": "fl", "application_namespace": "demo",
        "application_desc": "federated", "microservices": [{
            "microserviceID": "", "microservice_name": "fl", "microservice_namespace": "demo",
            "virtualization": "ml-training", "memory": 128, "vcpus": 1,
            "training": {"framework": "flower", "strategy": "fedavg", "rounds": ROUNDS, "min_clients": 2,
                         "local_epochs": LOCAL_EPOCHS, "batch_size": 16, "learning_rate": LEARNING_RATE,
                         "data": "data:digits", "model": parent},
            "constraints": [], "connectivity": []}]}]}


def test_apply_of_a_training_sla_registers_a_trained_version_with_lineage(stack: Stack,
                                                                          tmp_path: Path) -> None:
    root = RootClient(stack.root_url)
    parent = root.register_model("digits-fl", mlp.to_onnx(mlp.new_model(0)))
    sla = tmp_path / "fl.json"
    sla.write_text(json.dumps(training_sla(f"digits-fl:{parent['version']}")))
    code, out, err = run_cli(stack, tmp_path, "apply", str(sla))  # `treeline apply`: submit + an instance
    assert code == 0, (out, err)
    service_id = str(root.find_service("fl")["service_id"])
    deadline = time.monotonic() + DEADLINE_S
    service = root.service(service_id)
    seen: set[int] = set()  # Flower processes seen while it trains
    while service.get("status") not in ("DELETED", "FAILED") and time.monotonic() < deadline:
        seen.update(flower_processes(stack))
        time.sleep(0.5)  # polling the root with a deadline
        service = root.service(service_id)
    events = root.service_events(service_id)
    assert service.get("status") == "DELETED", (service.get("status_detail"), events)
    assert "training done: registered digits-fl:" in service["status_detail"]

    version = root.model_version("digits-fl", "latest")
    assert version["version"] == parent["version"] + 1
    lineage = version["lineage"]
    assert lineage["parent"] == {"name": "digits-fl", "version": parent["version"]}
    params = lineage["parameters"]
    assert (params["strategy"], params["rounds"]) == ("fedavg", ROUNDS)
    assert params["data_selector"] == "data:digits"
    assert len(params["clients"]) == len(NODES)
    accuracies = params["accuracy_per_round"]
    assert len(accuracies) == ROUNDS + 1 and accuracies[-1] > accuracies[0], accuracies
    split = federated.split(federated.load_digits(), len(NODES), alpha=0.5, seed=3)  # the fixture's
    central = mlp.new_model(0)  # the same model on all the nodes' data together, as many epochs
    x, y = np.concatenate([s.x for s in split.shards]), np.concatenate([s.y for s in split.shards])
    mlp.train(central, x, y, epochs=ROUNDS * LOCAL_EPOCHS, batch_size=16, lr=LEARNING_RATE)
    central_accuracy = mlp.evaluate(central, split.test.x, split.test.y)[1]
    assert 100 * (central_accuracy - accuracies[-1]) <= GAP_POINTS, (central_accuracy, accuracies)

    rounds = [e for e in events if e.get("kind") == "training_round"]
    assert [e["round"] for e in rounds] == list(range(ROUNDS + 1)), events
    assert [e["accuracy"] for e in rounds] == accuracies
    assert any(e.get("kind") == "training_registered" for e in events), events
    deadline = time.monotonic() + 15
    while flower_processes(stack) and time.monotonic() < deadline:  # the cluster stopped every part
        time.sleep(0.2)
    assert len(seen) >= len(NODES) and flower_processes(stack) == [], seen
    code, out, err = run_cli(stack, tmp_path, "describe", "service", service_id)
    assert code == 0 and "training_round" in out, (out, err)
    test = federated.load_shard(stack.config.data_dir / "fl-split" / federated.TEST_FILE)
    trained = root.artifact(version["sha256"])
    _deploy_and_compare(stack, f"digits-fl:{version['version']}", trained, test.x[:8])


def serving_sla(model: str) -> dict[str, Any]:
    name, version = model.split(":")
    return {"sla_version": "v2.0", "customerID": "Admin", "applications": [{
        "applicationID": "", "application_name": "fl-serve", "application_namespace": "demo",
        "application_desc": "the trained version, served", "microservices": [{
            "microserviceID": "", "microservice_name": "digits", "microservice_namespace": "demo",
            "virtualization": "ml-model", "memory": 128, "vcpus": 1,
            "model": {"name": name, "version": int(version),
                      "inputs": [{"name": mlp.INPUT_NAME, "shape": [1, mlp.FEATURES], "dtype": "float32"}]},
            "constraints": [], "connectivity": []}]}]}


def _deploy_and_compare(stack: Stack, model: str, onnx_bytes: bytes, rows: np.ndarray) -> None:
    """The registered result deploys like any version; its answers equal the exported model's
    (onnxruntime on the registered artifact, the bytes the server's export wrote)."""
    root = RootClient(stack.root_url)
    [application] = root.apply(serving_sla(model))
    [service_id] = application["microservices"]
    root.deploy_service(service_id)
    root.wait_deployed(service_id, timeout=DEADLINE_S)
    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    with ServiceClient(service_resolver(stack.root_url, service_id)) as client:
        for row in rows:
            x = row.reshape(1, mlp.FEATURES).astype(np.float32)
            outputs, _ = client.infer({mlp.INPUT_NAME: x})
            expected = session.run([mlp.OUTPUT_NAME], {mlp.INPUT_NAME: x})[0]
            np.testing.assert_allclose(outputs[mlp.OUTPUT_NAME], expected, rtol=1e-5, atol=1e-5)
