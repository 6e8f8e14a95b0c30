"""KServe v2 tensors: JSON and binary requests decode to the right arrays; every fault names its field."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from cluster_orchestrator.inference_v2 import FIND_TTL, V2Gateway
from treeline_common.clock import FakeClock
from treeline_common.errors import InvalidInput, NotFound
from treeline_common.inference_v2 import (
    HEADER_LENGTH,
    InferRequest,
    bearer_matches,
    datatype_of,
    decode_request,
    encode_response,
    tensor_metadata,
)


def body(doc: Any) -> bytes:
    return json.dumps(doc).encode()


def test_json_inputs_decode_flat_or_nested() -> None:
    req = decode_request(body({"id": "r1", "inputs": [
        {"name": "ids", "shape": [1, 3], "datatype": "INT64", "data": [101, 2023, 102]},
        {"name": "x", "shape": [2, 2], "datatype": "FP32", "data": [[1, 2], [3, 4]]}]}))
    assert req.id == "r1" and list(req.inputs) == ["ids", "x"]
    assert req.inputs["ids"].dtype == np.int64 and req.inputs["ids"].tolist() == [[101, 2023, 102]]
    assert req.inputs["x"].dtype == np.float32 and req.inputs["x"].shape == (2, 2)
    assert req.outputs is None and not req.binary("anything")


def test_binary_extension_round_trip() -> None:
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    mask = np.ones((1, 4), dtype=np.int64)
    head = body({"inputs": [
        {"name": "x", "shape": [2, 3], "datatype": "FP32", "parameters": {"binary_data_size": x.nbytes}},
        {"name": "mask", "shape": [1, 4], "datatype": "INT64",
         "parameters": {"binary_data_size": mask.nbytes}}],
        "outputs": [{"name": "y", "parameters": {"binary_data": True}}, {"name": "z"}]})
    req = decode_request(head + x.tobytes() + mask.tobytes(), str(len(head)))
    assert np.array_equal(req.inputs["x"], x) and np.array_equal(req.inputs["mask"], mask)
    assert req.outputs == ("y", "z") and req.binary("y") and not req.binary("z")
    y, z = np.full((2, 2), 0.5, dtype=np.float32), np.array([7], dtype=np.int64)
    payload, headers = encode_response("m", "3", req, {"y": y, "z": z, "extra": y})
    split = int(headers[HEADER_LENGTH])
    doc = json.loads(payload[:split])
    assert doc["model_name"] == "m" and doc["model_version"] == "3"
    assert [o["name"] for o in doc["outputs"]] == ["y", "z"]  # only the requested ones
    assert doc["outputs"][1] == {"name": "z", "shape": [1], "datatype": "INT64", "data": [7]}
    assert doc["outputs"][0]["parameters"]["binary_data_size"] == y.nbytes
    assert np.array_equal(np.frombuffer(payload[split:], dtype=np.float32).reshape(2, 2), y)


def test_json_response_without_binary_has_no_header() -> None:
    payload, headers = encode_response("m", "1", InferRequest(id="", inputs={}),
                                       {"y": np.array([[1.5, 2.0]], dtype=np.float32)})
    assert HEADER_LENGTH not in headers
    assert json.loads(payload)["outputs"] == [{"name": "y", "shape": [1, 2], "datatype": "FP32",
                                               "data": [1.5, 2.0]}]


@pytest.mark.parametrize(("doc", "header", "path"), [
    (b"{nope", None, "body"),
    (body([1, 2]), None, "body"),
    (body({"inputs": []}), None, "inputs"),
    (body({"inputs": [{"name": "x", "shape": [2], "datatype": "FP32", "data": [1]}]}), None,
     "inputs[0].data"),
    (body({"inputs": [{"name": "x", "shape": [2], "datatype": "BYTES", "data": ["a", "b"]}]}), None,
     "inputs[0].datatype"),
    (body({"inputs": [{"name": "x", "shape": [-1], "datatype": "FP32", "data": []}]}), None,
     "inputs[0].shape"),
    (body({"inputs": [{"name": "x", "shape": [2], "datatype": "INT64", "data": ["a", "b"]}]}), None,
     "inputs[0].data"),
    (body({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]},
                      {"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}]}), None,
     "inputs[1].name"),
    (body({"inputs": [{"name": "x", "shape": [1 << 20, 1 << 20], "datatype": "FP32", "data": []}]}), None,
     "inputs[0].shape"),
    (body({"inputs": [{"name": "x", "shape": [2], "datatype": "FP32"}]}), None, "inputs[0]"),
    (body({"inputs": [{"name": "x", "shape": [2], "datatype": "FP32",
                       "parameters": {"binary_data_size": 4}}]}), "10",
     "inputs[0].parameters.binary_data_size"),
    (body({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}]}), "x", HEADER_LENGTH),
    (body({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}], "outputs": "y"}), None,
     "outputs"),
])
def test_bad_requests_name_the_field(doc: bytes, header: str | None, path: str) -> None:
    if header == "10":  # a binary input that claims more than the body has
        header = str(len(doc))
    with pytest.raises(InvalidInput) as caught:
        decode_request(doc, header)
    assert caught.value.details[0]["path"] == path, caught.value.details


def test_unclaimed_binary_bytes_and_unknown_outputs_are_refused() -> None:
    head = body({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}]})
    with pytest.raises(InvalidInput, match="not claimed"):
        decode_request(head + b"\0\0\0\0", str(len(head)))
    req = decode_request(body({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}],
                               "outputs": [{"name": "nope"}]}))
    with pytest.raises(InvalidInput, match="no output 'nope'"):
        encode_response("m", "1", req, {"y": np.zeros(1, dtype=np.float32)})


def test_metadata_from_a_registry_signature() -> None:
    assert tensor_metadata([{"name": "input_ids", "dtype": "int64", "shape": ["batch", 16]},
                            {"name": "x", "dtype": "float32", "shape": [1, 3, 224, 224]}]) == [
        {"name": "input_ids", "datatype": "INT64", "shape": [-1, 16]},
        {"name": "x", "datatype": "FP32", "shape": [1, 3, 224, 224]}]
    assert datatype_of(np.float16) == "FP16" and datatype_of("double") == "FP64"
    with pytest.raises(InvalidInput):
        datatype_of("string")


@pytest.mark.parametrize(("header", "ok"), [
    ("Bearer k3y", True), ("bearer  k3y ", True), ("Bearer k3y2", False), ("Basic k3y", False), ("", False),
    ("k3y", False), ("Bearer \xe9t\xe9", False),  # non-ASCII: refused, never a TypeError
])
def test_bearer_matches_the_caller_key(header: str, ok: bool) -> None:
    assert bearer_matches(header, "k3y") is ok
    assert not bearer_matches("Bearer ", "")  # no key: nothing matches


def test_the_cluster_gateway_reads_a_names_deployment_once_a_second() -> None:
    """Reading every deployment per request cost 1.5-2 ms on the embedded MongoDB."""
    clock = FakeClock()
    doc = {"deployment_id": "s1-0", "service_id": "s1", "status": "RUNNING", "job": {}}
    reads: list[int] = []

    def list_deployments() -> list[dict[str, Any]]:
        reads.append(1)
        return [doc]

    core = SimpleNamespace(clock=clock, book=SimpleNamespace(list_deployments=list_deployments))
    gateway = V2Gateway(core)  # type: ignore[arg-type]
    assert gateway.find("s1") is doc and gateway.find("s1") is doc and len(reads) == 1
    clock.advance(FIND_TTL)
    assert gateway.find("s1-0") is doc and gateway.find("s1") is doc and len(reads) == 3
    with pytest.raises(NotFound):  # a miss is never remembered
        gateway.find("nope")
    with pytest.raises(NotFound):
        gateway.find("nope")
    assert len(reads) == 5
