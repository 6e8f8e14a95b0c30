"""``treeline apply`` (a process) of training SLAs against a real stack: refused and planned.

A stack (root, cluster, broker, 2 node engines labelled ``data:digits``); no training runs.
Checked end to end, through the real root -> cluster dry-run route: ``apply --dry-run`` names the
Flower server and clients, or why the training cannot be scheduled naming ``training.data``
(with the labels the nodes carry) or ``training.min_clients``; ``apply`` of a training SLA whose
starting model does not exist fails naming ``applications[0].microservices[0].training.model``
and leaves no application behind.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from treeline_test_helpers import run_cli, running_stack, trainable_onnx

from treeline_cli.root_client import RootClient
from treeline_cli.stack import Stack

pytestmark = pytest.mark.integration

NODES = ("server-1", "server-2")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    data = tmp_path_factory.mktemp("fl-cli")
    with running_stack(data, nodes=len(NODES), profiles=("server",), telemetry_interval=0.5, node_threads=1,
                       node_labels=dict.fromkeys(NODES, "data:digits")) as running:
        yield running


def sla(tmp: Path, model: str, data: str = "data:digits", min_clients: int = 2) -> str:
    doc: dict[str, Any] = {"sla_version": "v2.0", "customerID": "Admin", "applications": [{
        "applicationID": "", "application_name": "flcli", "application_namespace": "demo",
        "application_desc": "federated", "microservices": [{
            "microserviceID": "", "microservice_name": "fl", "microservice_namespace": "demo",
            "virtualization": "ml-training", "memory": 128, "vcpus": 1,
            "training": {"framework": "flower", "rounds": 2, "min_clients": min_clients, "data": data,
                         "model": model},
            "constraints": [], "connectivity": []}]}]}
    path = tmp / f"{data.replace(':', '-')}-{min_clients}-{model.replace(':', '-')}.json"
    path.write_text(json.dumps(doc))
    return str(path)


def test_dry_run_and_refusals_of_training_slas(stack: Stack, tmp_path: Path) -> None:
    root = RootClient(stack.root_url)
    parent = root.register_model("digits-cli", trainable_onnx())
    model = f"digits-cli:{parent['version']}"
    code, out, err = run_cli(stack, tmp_path, "apply", "--dry-run", sla(tmp_path, model))
    assert code == 0, (out, err)
    assert "training schedulable on" in out and "server:   server-" in out, out
    assert "clients:  server-1, server-2 (2 clients)" in out, out

    code, out, err = run_cli(stack, tmp_path, "apply", "--dry-run", sla(tmp_path, model, data="data:digitz"))
    assert code == 1 and "training NOT schedulable" in out, (out, err)  # a dry run that cannot schedule: 1
    why = "training.data: no node carries label data:digitz; labels seen: data:digits"
    assert f"not schedulable: {why}" in out, out

    code, out, err = run_cli(stack, tmp_path, "apply", "--dry-run", sla(tmp_path, model, min_clients=3))
    assert code == 1
    assert "not schedulable: 2 node(s) with data:digits pass the filters; training.min_clients is 3" in out, (
        out, err)

    code, out, err = run_cli(stack, tmp_path, "apply", sla(tmp_path, "ghost:1"))
    assert code == 1 and len(err) == 1, (out, err)
    path = "applications[0].microservices[0].training.model"
    assert err[0].startswith(f"error: {path}: starting model ghost:1"), err
    assert [a for a in root.applications() if a.get("application_name") == "flcli"] == []
