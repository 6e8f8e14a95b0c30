"""The entry node's Open Inference Protocol (node_engine.v2_http) against a real data plane.

A real :class:`DataPlaneServer` serves a tiny two-input ONNX model (``y = x * mask``, float32 and
int64, batch dimension symbolic); the v2 server in front of it is called over real HTTP on
loopback. JSON and binary answers equal ``session.run``; the caller's mistakes are 4xx naming
the field; a service whose callers sign needs its caller key, and the data plane itself checks
the signature the node adds.
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import requests
from onnx import TensorProto, helper

from node_engine.config import V2_PORT_ENV, parse_args
from node_engine.data_plane.security import StageAccess
from node_engine.data_plane.server import DataPlaneServer
from node_engine.runtime import load_partition
from node_engine.stages import LoadedStage, StageRunner, StageTable
from node_engine.v2_http import V2Server
from treeline_common.inference_v2 import HEADER_LENGTH
from treeline_common.messages import NextStage, stage_key

OPEN, PRIVATE, INNER = "svc1-0", "svc2-0", "svc3-0"
CALLER_KEY = bytes(range(32))
CLUSTER = "http://cluster.invalid:9"


def tiny_model(path: Path) -> Path:
    """``y = x * Cast(mask)``: inputs x FP32 [N,4] and mask INT64 [N,4], output y FP32 [N,4]."""
    graph = helper.make_graph(
        [helper.make_node("Cast", ["mask"], ["maskf"], to=TensorProto.FLOAT),
         helper.make_node("Mul", ["x", "maskf"], ["y"])], "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4]),
         helper.make_tensor_value_info("mask", TensorProto.INT64, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    path = tiny_model(tmp_path_factory.mktemp("v2node") / "tiny.onnx")
    stages = StageTable()
    private = StageAccess(data_key=bytes(32), caller_key=CALLER_KEY, entry=True)
    for dep, access in ((OPEN, StageAccess()), (PRIVATE, private)):
        stages.put(LoadedStage(stage_key(dep, 0, 0), dep, 0, "", 0, load_partition(path), None,
                               access=access))
    # INNER: only its second stage is here (its entry runs elsewhere)
    stages.put(LoadedStage(stage_key(INNER, 1, 0), INNER, 1, "", 0, load_partition(path), None))
    server = DataPlaneServer(stages, StageRunner())
    v2 = V2Server(stages, server.start(), cluster_url=CLUSTER, name="n1")
    try:
        yield v2.start(), path
    finally:
        v2.close()
        server.close()


def inputs() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(3)
    return {"x": rng.standard_normal((2, 4)).astype(np.float32),
            "mask": rng.integers(0, 2, (2, 4)).astype(np.int64)}


def expected(path: Path, feed: dict[str, np.ndarray]) -> np.ndarray:
    return np.asarray(ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(["y"], feed)[0])


def assert_y(out: dict[str, Any], path: Path, feed: dict[str, np.ndarray]) -> None:
    got = np.array(out["data"], np.float32).reshape(out["shape"])
    np.testing.assert_array_equal(got, expected(path, feed))


def json_doc(feed: dict[str, np.ndarray], **overrides: Any) -> dict[str, Any]:
    tensors = [{"name": n, "shape": list(a.shape), "datatype": "FP32" if a.dtype == np.float32 else "INT64",
                "data": a.reshape(-1).tolist()} for n, a in feed.items()]
    return {"id": "r7", "inputs": tensors, **overrides}


def test_metadata_and_health(node: tuple[str, Path]) -> None:
    url, _ = node
    assert requests.get(f"{url}/v2/health/ready", timeout=5).json() == {"ready": True}
    assert requests.get(f"{url}/v2/health/live", timeout=5).json() == {"live": True}
    meta = requests.get(f"{url}/v2/models/svc1", timeout=5).json()  # the service id names it too
    assert meta["deployment_id"] == OPEN and meta["platform"] == "onnxruntime_onnx"
    assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 4]},
                              {"name": "mask", "datatype": "INT64", "shape": [-1, 4]}]
    assert meta["outputs"] == [{"name": "y", "datatype": "FP32", "shape": [-1, 4]}]
    assert requests.get(f"{url}/v2/models/{OPEN}/ready", timeout=5).json()["ready"] is True


def test_json_and_binary_answers_equal_session_run(node: tuple[str, Path]) -> None:
    url, path = node
    feed = inputs()
    answer = requests.post(f"{url}/v2/models/{OPEN}/infer", json=json_doc(feed), timeout=10)
    assert answer.status_code == 200, answer.text
    doc = answer.json()
    [out] = doc["outputs"]
    assert doc["id"] == "r7" and out["name"] == "y" and out["datatype"] == "FP32"
    assert_y(out, path, feed)

    head = json.dumps({"inputs": [{"name": n, "shape": list(a.shape),
                                   "datatype": "FP32" if a.dtype == np.float32 else "INT64",
                                   "parameters": {"binary_data_size": a.nbytes}} for n, a in feed.items()],
                       "outputs": [{"name": "y", "parameters": {"binary_data": True}}]}).encode()
    body = head + b"".join(a.tobytes() for a in feed.values())
    # one keep-alive connection, two requests: the second must find the connection in order
    conn = http.client.HTTPConnection(url.removeprefix("http://"), timeout=10)
    for _ in range(2):
        conn.request("POST", f"/v2/models/{OPEN}/infer", body=body, headers={HEADER_LENGTH: str(len(head))})
        reply = conn.getresponse()
        content = reply.read()
        assert reply.status == 200, content
        split = int(reply.getheader(HEADER_LENGTH) or 0)
        [meta] = json.loads(content[:split])["outputs"]
        np.testing.assert_array_equal(np.frombuffer(content[split:], np.float32).reshape(meta["shape"]),
                                      expected(path, feed))
    conn.close()


@pytest.mark.parametrize(("change", "status", "field"), [
    (lambda d: d["inputs"][1].update(datatype="FP32"), 400, "inputs[1].datatype"),
    (lambda d: d["inputs"][0].update(shape=[4, 2]), 400, "inputs[0].shape"),
    (lambda d: d["inputs"][0].update(name="z"), 400, "inputs[0].name"),
    (lambda d: d["inputs"].pop(1), 400, "inputs"),
    (lambda d: d["inputs"][0].update(data=[1.0]), 400, "inputs[0].data"),
    (lambda d: d.update(outputs=[{"name": "nope"}]), 400, "outputs"),
])
def test_bad_requests_are_4xx_naming_the_field(node: tuple[str, Path], change: Any, status: int,
                                               field: str) -> None:
    url, _ = node
    doc = json_doc(inputs())
    change(doc)
    answer = requests.post(f"{url}/v2/models/{OPEN}/infer", json=doc, timeout=10)
    assert answer.status_code == status and field in answer.json()["error"], answer.text


def test_unknown_models_routes_and_bodies(node: tuple[str, Path]) -> None:
    url, _ = node
    unknown = requests.post(f"{url}/v2/models/nope/infer", json=json_doc(inputs()), timeout=5)
    assert unknown.status_code == 404 and "nope" in unknown.json()["error"]
    assert requests.get(f"{url}/v2/models/nope", timeout=5).status_code == 404
    assert requests.get(f"{url}/v3/anything", timeout=5).status_code == 404
    assert requests.get(f"{url}/v2/models/{OPEN}/infer", timeout=5).status_code == 405
    not_json = requests.post(f"{url}/v2/models/{OPEN}/infer", data=b"{nope", timeout=5)
    assert not_json.status_code == 400 and "body" in not_json.json()["error"]
    header = requests.post(f"{url}/v2/models/{OPEN}/infer", data=b"{}", headers={HEADER_LENGTH: "x"},
                           timeout=5)
    assert header.status_code == 400 and HEADER_LENGTH in header.json()["error"]


def test_inner_stage_here_redirects_to_the_clusters_stable_address(node: tuple[str, Path]) -> None:
    url, _ = node
    answer = requests.post(f"{url}/v2/models/{INNER}/infer", json={}, timeout=5, allow_redirects=False)
    assert answer.status_code == 307 and answer.headers["Location"] == f"{CLUSTER}/v2/models/{INNER}/infer"
    assert "entry" in answer.json()["error"]


def test_callers_of_a_private_service_show_its_key_and_the_data_plane_checks_the_signature(
        node: tuple[str, Path]) -> None:
    url, path = node
    infer = f"{url}/v2/models/{PRIVATE}/infer"
    feed = inputs()

    def post(authorization: str | None) -> requests.Response:
        headers = {"Authorization": authorization} if authorization is not None else {}
        return requests.post(infer, json=json_doc(feed), headers=headers, timeout=10)

    assert post(None).status_code == 401
    wrong = post("Bearer " + "0" * 64)
    assert wrong.status_code == 401 and "Authorization" in wrong.json()["error"]
    assert post("Bearer \xe9t\xe9").status_code == 401  # not a 500
    answer = post(f"Bearer {CALLER_KEY.hex()}")
    assert answer.status_code == 200, answer.text
    [out] = answer.json()["outputs"]
    assert_y(out, path, feed)


def test_a_route_to_another_node_is_not_an_entry(tmp_path: Path) -> None:
    """Only entries answer: a stage 0 marked not-entry under a data key is an inner stage."""
    stages = StageTable()
    inner = StageAccess(data_key=bytes(32), entry=False)
    session = load_partition(tiny_model(tmp_path / "m.onnx"))
    stages.put(LoadedStage(stage_key("d-0", 0, 0), "d-0", 0, "", 0, session,
                           NextStage("n2", "tcp://127.0.0.1:1", stage_key("d-0", 1, 0)), access=inner))
    v2 = V2Server(stages, "tcp://127.0.0.1:1")
    url = v2.start()
    try:
        assert requests.get(f"{url}/v2/models/d-0", timeout=5).status_code == 404  # no cluster URL: 404
    finally:
        v2.close()


def test_the_v2_port_option(monkeypatch: pytest.MonkeyPatch) -> None:
    base = ["--cluster-url", "http://c:1", "--name", "n1"]
    monkeypatch.delenv(V2_PORT_ENV, raising=False)
    assert parse_args(base).v2_port is None  # off unless asked for
    assert parse_args([*base, "--v2-port", "0"]).v2_port == 0
    monkeypatch.setenv(V2_PORT_ENV, "8123")
    assert parse_args(base).v2_port == 8123
    assert parse_args([*base, "--v2-port", "9000"]).v2_port == 9000  # the flag wins
    for bad_env, bad_args in (("eighty", []), ("", ["--v2-port", "70000"])):
        monkeypatch.setenv(V2_PORT_ENV, bad_env)
        with pytest.raises(SystemExit):
            parse_args([*base, *bad_args])


def test_a_one_stage_deployment_runs_in_the_http_thread_on_a_native_node(tmp_path: Path) -> None:
    """With the node's runner (native devices) no data plane is needed: its endpoint here is dead."""
    path = tiny_model(tmp_path / "m.onnx")
    stages = StageTable()
    stage = LoadedStage(stage_key(OPEN, 0, 0), OPEN, 0, "", 0, load_partition(path), None)
    stages.put(stage)
    v2 = V2Server(stages, "tcp://127.0.0.1:1", runner=StageRunner(), timeout=1.0)
    url = v2.start()
    try:
        feed = inputs()
        answer = requests.post(f"{url}/v2/models/{OPEN}/infer", json=json_doc(feed), timeout=10)
        assert answer.status_code == 200, answer.text
        assert_y(answer.json()["outputs"][0], path, feed)
        assert stage.counters.snapshot()[0] == 1  # counted like a data-plane request
    finally:
        v2.close()
