"""The Open Inference Protocol (KServe v2 REST) at the cluster, on a real stack.

Real processes on loopback: Mosquitto, root, cluster and two node engines; a small chain model
split over both nodes. Plain HTTP (``requests``) as curl or Triton's client would send it: the
metadata names the model's tensors; JSON and binary requests answer what onnxruntime computes on
the whole model; bad requests are 4xx naming the field; a service whose callers must sign needs
its caller key. The node engines run with ``--v2-port 0``: the entry node answers the same
requests itself (the fast path), the other node redirects them to the cluster's stable address.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import requests
from treeline_fault_harness import (
    INPUT_NAME,
    OUTPUT_NAME,
    Deployment,
    chain_model,
    deploy,
    model_sla,
    model_stack,
    wait_until,
)

from treeline_cli.stack import Stack

pytestmark = pytest.mark.integration

MODEL = chain_model(width=32, layers=4)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    data_dir: Path = tmp_path_factory.mktemp("v2")
    with model_stack(data_dir, MODEL, profiles=("server", "server"), node_args=("--v2-port", "0")) as running:
        yield running


def whole_model(x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(MODEL, providers=["CPUExecutionProvider"])
    return np.asarray(session.run([OUTPUT_NAME], {INPUT_NAME: x})[0])


def infer_json(url: str, x: np.ndarray, **headers: str) -> requests.Response:
    doc = {"id": "q1", "inputs": [{"name": INPUT_NAME, "shape": list(x.shape), "datatype": "FP32",
                                   "data": x.reshape(-1).tolist()}]}
    return requests.post(url, json=doc, headers=headers, timeout=30)


def node_v2_urls(stack: Stack) -> dict[str, str]:
    """Each node's data-plane endpoint -> its v2 URL, read from the lines its log starts with."""
    def read() -> dict[str, str] | None:
        urls = {}
        for process in stack.processes:
            if process.name.startswith("node-"):
                text = process.log_path.read_text(encoding="utf-8", errors="replace")
                data = re.search(r"data plane serving on (tcp://\S+)", text)
                v2 = re.search(r"v2 REST \(Open Inference Protocol\) on (http://\S+)/v2", text)
                if data is None or v2 is None:
                    return None
                urls[data.group(1)] = v2.group(1)
        return urls
    return wait_until(read, 10.0, "the nodes' v2 addresses in their logs")


def entry_and_inner(stack: Stack, service: Deployment) -> tuple[str, str]:
    """``(the entry node's v2 URL, the other node's)`` of a deployment split over both nodes."""
    urls = node_v2_urls(stack)
    entry = urls[service.placement()["entry"]["endpoint"]]
    [inner] = [url for url in urls.values() if url != entry]
    return entry, inner


def sla(app: str, private: bool = False) -> dict[str, Any]:
    doc = copy.deepcopy(model_sla(app, "chain", [1, 32], max_partitions=2))
    if private:
        doc["applications"][0]["microservices"][0]["model"]["privacy"] = {"authenticate_callers": True}
    return doc


def test_v2_rest_answers_like_the_whole_model(stack: Stack) -> None:
    service = deploy(stack, sla("v2-open"))
    assert len(service.placement()["stages"]) == 2
    base = f"{stack.cluster_url}/v2/models/{service.service_id}"
    assert requests.get(f"{stack.cluster_url}/v2/health/ready", timeout=5).json() == {"ready": True}
    assert requests.get(f"{base}/ready", timeout=5).status_code == 200
    meta = requests.get(base, timeout=5).json()
    assert meta["inputs"] == [{"name": INPUT_NAME, "datatype": "FP32", "shape": [1, 32]}]
    assert meta["outputs"][0]["name"] == OUTPUT_NAME and meta["platform"] == "onnxruntime_onnx"
    by_name = requests.get(f"{stack.cluster_url}/v2/models/svc", timeout=5).json()  # the microservice name
    assert by_name["deployment_id"] == meta["deployment_id"]

    x = np.random.default_rng(1).standard_normal((1, 32)).astype(np.float32)
    answer = infer_json(f"{base}/infer", x)
    assert answer.status_code == 200, answer.text
    [out] = answer.json()["outputs"]
    assert out["name"] == OUTPUT_NAME and out["datatype"] == "FP32" and answer.json()["id"] == "q1"
    np.testing.assert_allclose(np.array(out["data"], dtype=np.float32).reshape(out["shape"]), whole_model(x),
                               rtol=1e-5, atol=1e-6)

    # the binary tensor data extension, both ways
    head = json.dumps({"inputs": [{"name": INPUT_NAME, "shape": [1, 32], "datatype": "FP32",
                                   "parameters": {"binary_data_size": x.nbytes}}],
                       "parameters": {"binary_data_output": True}}).encode()
    binary = requests.post(f"{base}/infer", data=head + x.tobytes(), timeout=30,
                           headers={"Inference-Header-Content-Length": str(len(head)),
                                    "Content-Type": "application/octet-stream"})
    assert binary.status_code == 200, binary.text
    split = int(binary.headers["Inference-Header-Content-Length"])
    [meta_out] = json.loads(binary.content[:split])["outputs"]
    got = np.frombuffer(binary.content[split:], dtype=np.float32).reshape(meta_out["shape"])
    np.testing.assert_allclose(got, whole_model(x), rtol=1e-5, atol=1e-6)

    # the caller's mistakes: 4xx naming the field, never a 500
    wrong = requests.post(f"{base}/infer", timeout=30, json={"inputs": [
        {"name": INPUT_NAME, "shape": [1, 32], "datatype": "FP32", "data": [1.0]}]})
    assert wrong.status_code == 400 and "inputs[0].data" in wrong.json()["error"]
    unknown = requests.post(f"{stack.cluster_url}/v2/models/nope/infer", timeout=30, json={})
    assert unknown.status_code == 404 and "nope" in unknown.json()["error"]
    shape = infer_json(f"{base}/infer", np.zeros((1, 31), dtype=np.float32))
    assert shape.status_code == 400 and "inputs[0].shape" in shape.json()["error"]  # checked before it runs
    named = requests.post(f"{base}/infer", timeout=30, json={"inputs": [
        {"name": "inp", "shape": [1, 32], "datatype": "FP32", "data": [0.0] * 32}]})
    assert named.status_code == 400 and "inputs[0].name" in named.json()["error"]

    # the entry node answers the same requests itself; the other node sends callers to the cluster
    entry, inner = entry_and_inner(stack, service)
    node_base = f"{entry}/v2/models/{service.service_id}"
    assert requests.get(node_base, timeout=5).json()["inputs"] == meta["inputs"]
    direct = infer_json(f"{node_base}/infer", x)
    assert direct.status_code == 200, direct.text
    [out] = direct.json()["outputs"]
    np.testing.assert_allclose(np.array(out["data"], dtype=np.float32).reshape(out["shape"]), whole_model(x),
                               rtol=1e-5, atol=1e-6)
    node_binary = requests.post(f"{node_base}/infer", data=head + x.tobytes(), timeout=30,
                                headers={"Inference-Header-Content-Length": str(len(head))})
    assert node_binary.status_code == 200
    node_split = int(node_binary.headers["Inference-Header-Content-Length"])
    assert node_binary.content[node_split:] == binary.content[split:]  # the same tensor bytes
    node_head, cluster_head = json.loads(node_binary.content[:node_split]), json.loads(binary.content[:split])
    assert node_head.pop("model_version") == "" and cluster_head.pop("model_version") == "1"  # the node
    assert node_head == cluster_head  # knows its plan, not the registry version
    at_node = infer_json(f"{node_base}/infer", np.zeros((1, 31), dtype=np.float32))
    assert at_node.status_code == 400 and "inputs[0].shape" in at_node.json()["error"]
    moved = requests.post(f"{inner}/v2/models/{service.service_id}/infer", json={}, timeout=5,
                          allow_redirects=False)
    assert moved.status_code == 307 and moved.headers["Location"] == f"{base}/infer"
    followed = infer_json(f"{inner}/v2/models/{service.service_id}/infer", x)  # requests follows the 307
    assert followed.status_code == 200 and followed.json()["outputs"][0]["data"] == out["data"]


def test_a_service_whose_callers_sign_needs_its_caller_key(stack: Stack) -> None:
    service = deploy(stack, sla("v2-private", private=True))
    url = f"{stack.cluster_url}/v2/models/{service.service_id}/infer"
    x = np.ones((1, 32), dtype=np.float32)
    assert infer_json(url, x).status_code == 401
    assert infer_json(url, x, Authorization="Bearer " + "0" * 64).status_code == 401
    key = service.doc().get("caller_key")
    assert key, "the owner reads the caller key at the root"
    answer = infer_json(url, x, Authorization=f"Bearer {key}")
    assert answer.status_code == 200, answer.text
    # the entry node applies the same rule, and its data plane checks the signature it adds
    entry, _ = entry_and_inner(stack, service)
    at_node = f"{entry}/v2/models/{service.service_id}/infer"
    assert infer_json(at_node, x).status_code == 401
    assert infer_json(at_node, x, Authorization="Bearer " + "0" * 64).status_code == 401
    direct = infer_json(at_node, x, Authorization=f"Bearer {key}")
    assert direct.status_code == 200 and direct.json()["outputs"] == answer.json()["outputs"]
