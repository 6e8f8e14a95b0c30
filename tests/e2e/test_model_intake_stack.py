"""Model intake through a real stack (broker, root, cluster, 2 node engines as processes): one small
``onnx.helper`` model per kind, each deployed and answering like onnxruntime on the whole model,
or refused at upload with its reason.

| kind | expected |
|---|---|
| symbolic input ``[N, 3, H, W]``, SLA ``[1, 3, 32, 32]`` | deployed at 1,024x the FLOPs |
| graph output without a shape | deployed (the shape is inferred) |
| weights in ``conv.onnx.data`` (external data) | `treeline model register` sends both; deployed |
| a sequence between two ops | deployed in 2 partitions, never cut through the sequence |
| an output whose type cannot be inferred | refused at upload: one line naming ``outputs[0].dtype`` |
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from treeline_test_helpers import run_cli, running_stack

from ml_scheduler.binding import bind_input_shapes
from ml_scheduler.graph import analyze_model
from node_engine.data_plane.client import TensorClient
from treeline_cli.root_client import RootClient
from treeline_cli.stack import Stack

pytestmark = pytest.mark.integration
OPSET = [helper.make_opsetid("", 17)]


def conv_model(input_shape: list[int | str], output_shape: list[int | str] | None) -> onnx.ModelProto:
    """x -> Conv 3->8 (3x3, pad 1) -> Relu -> Conv 8->4 -> y: two convs, so there is a cut."""
    rng = np.random.default_rng(0)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, input_shape)
    y = (helper.make_tensor_value_info("y", TensorProto.FLOAT, output_shape) if output_shape is not None
         else helper.make_empty_tensor_value_info("y"))
    weights = [numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "w1"),
               numpy_helper.from_array(rng.standard_normal((4, 8, 3, 3)).astype(np.float32), "w2")]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Conv", ["r", "w2"], ["y"], pads=[1, 1, 1, 1])]
    return helper.make_model(helper.make_graph(nodes, "conv", [x], [y], weights), opset_imports=OPSET)


def sequence_model() -> onnx.ModelProto:
    """x -> Relu -> SequenceConstruct -> SequenceAt -> Relu -> Relu -> y."""
    zero = numpy_helper.from_array(np.array(0, dtype=np.int64), "zero")
    nodes = [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("SequenceConstruct", ["a"], ["s"]),
             helper.make_node("SequenceAt", ["s", "zero"], ["b"]), helper.make_node("Relu", ["b"], ["c"]),
             helper.make_node("Relu", ["c"], ["y"])]
    graph = helper.make_graph(nodes, "seq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])], [zero])
    return helper.make_model(graph, opset_imports=OPSET)


def sla(app: str, model: str, shape: list[int], partitions: int) -> dict[str, Any]:
    return {"sla_version": "v2.0", "customerID": "Admin", "applications": [{
        "applicationID": "", "application_name": app, "application_namespace": "demo",
        "application_desc": "intake", "microservices": [{
            "microserviceID": "", "microservice_name": "m", "microservice_namespace": "demo",
            "virtualization": "ml-model", "memory": 256, "vcpus": 1,
            "model": {"name": model, "version": "latest", "max_partitions": partitions,
                      "scheduler_profile": "flops-balanced",
                      "inputs": [{"name": "x", "shape": shape, "dtype": "float32"}]},
            "constraints": [], "connectivity": []}]}]}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(tmp_path_factory.mktemp("stack"), nodes=2, profiles=("server", "server"),
                       telemetry_interval=1.0, node_threads=1, node_labels={}) as running:
        yield running


def cli(stack: Stack, cwd: Path, *argv: str) -> tuple[int, str, list[str]]:
    return run_cli(stack, cwd, *argv)


def deploy(stack: Stack, app: str, model: str, shape: list[int], partitions: int) -> dict[str, Any]:
    root = RootClient(stack.root_url)
    [application] = root.submit_sla(sla(app, model, shape, partitions))
    [service_id] = application["microservices"]
    root.deploy_service(service_id)
    return root.wait_deployed(service_id, timeout=120)


def answers_like_the_whole_model(service: dict[str, Any], model: onnx.ModelProto, shape: list[int]) -> None:
    placement = service["placement"]
    whole = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    sample = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    with TensorClient(placement["entry"]["endpoint"]) as client:
        outputs, _ = client.infer(placement["entry"]["stage_key"], {"x": sample}, timeout=60)
    np.testing.assert_allclose(outputs[placement["outputs"][0]], whole.run(None, {"x": sample})[0],
                               atol=1e-4, rtol=1e-4)


def test_symbolic_inputs_are_planned_at_the_sla_shape(stack: Stack) -> None:
    model = conv_model(["N", 3, "H", "W"], ["N", 4, "H", "W"])
    RootClient(stack.root_url).register_model("symbolic", model.SerializeToString())
    service = deploy(stack, "symbolic", "symbolic", [1, 3, 32, 32], 2)
    planned = sum(int(s.get("flops") or 0) for s in service["placement"]["stages"])
    bound = analyze_model(bind_input_shapes(model, {"x": [1, 3, 32, 32]})).total_flops
    assert planned == bound == analyze_model(model).total_flops * 32 * 32
    answers_like_the_whole_model(service, model, [1, 3, 32, 32])
    stored = RootClient(stack.root_url).model_profiles("symbolic", 1)  # the bound model's, kept apart
    assert stored and all(".b" in key for key in stored), stored


def test_an_output_without_a_shape_deploys(stack: Stack) -> None:
    model = conv_model([1, 3, 16, 16], None)
    RootClient(stack.root_url).register_model("shapeless", model.SerializeToString())
    service = deploy(stack, "shapeless", "shapeless", [1, 3, 16, 16], 2)
    answers_like_the_whole_model(service, model, [1, 3, 16, 16])


def test_external_data_is_registered_by_the_cli_and_deploys(stack: Stack, tmp_path: Path) -> None:
    model = conv_model([1, 3, 16, 16], [1, 4, 16, 16])
    exported = onnx.ModelProto()
    exported.CopyFrom(model)  # onnx.save moves the weights of what it saves out of the proto
    onnx.save(exported, str(tmp_path / "conv.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
              location="conv.onnx.data", size_threshold=0)
    code, out, err = cli(stack, tmp_path, "model", "register", str(tmp_path / "conv.onnx"),
                         "--name", "external")
    assert code == 0, (out, err)
    service = deploy(stack, "external", "external", [1, 3, 16, 16], 2)
    answers_like_the_whole_model(service, model, [1, 3, 16, 16])


def test_a_sequence_is_never_a_cut(stack: Stack) -> None:
    model = sequence_model()
    RootClient(stack.root_url).register_model("sequence", model.SerializeToString())
    service = deploy(stack, "sequence", "sequence", [1, 64], 3)
    graph = analyze_model(model)
    assert graph.uncuttable == {2}
    stages = service["placement"]["stages"]
    assert len(stages) >= 2  # it was split, just not through the sequence
    cut_sets = [set(s.get("inputs") or []) for s in stages[1:]]
    assert all("s" not in names for names in cut_sets)
    answers_like_the_whole_model(service, model, [1, 64])


def test_an_output_of_unknown_type_is_refused_at_upload(stack: Stack, tmp_path: Path) -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    graph = helper.make_graph([helper.make_node("Mystery", ["x"], ["y"], domain="com.example")], "custom",
                              [x], [helper.make_empty_tensor_value_info("y")])
    onnx.save(helper.make_model(graph, opset_imports=[*OPSET, helper.make_opsetid("com.example", 1)]),
              str(tmp_path / "custom.onnx"))
    code, out, err = cli(stack, tmp_path, "model", "register", str(tmp_path / "custom.onnx"))
    assert code != 0 and out == ""
    assert "outputs[0].dtype" in " ".join(err) and "neither declared nor inferable" in " ".join(err)
    assert "Traceback" not in " ".join(err)


def test_export_images_writes_a_context_per_partition(stack: Stack, tmp_path: Path) -> None:
    model = conv_model([1, 3, 16, 16], [1, 4, 16, 16])
    RootClient(stack.root_url).register_model("exported", model.SerializeToString())
    service = deploy(stack, "exported", "exported", [1, 3, 16, 16], 2)
    stages = service["placement"]["stages"]
    code, out, err = cli(stack, tmp_path, "export-images", "exported", str(tmp_path / "images"))
    assert code == 0, (out, err)
    folders = sorted(p.name for p in (tmp_path / "images").iterdir() if p.is_dir())
    assert folders == [f"stage-{i}" for i in range(len(stages))]
    for i, stage in enumerate(stages):
        data = (tmp_path / "images" / f"stage-{i}" / "partition.onnx").read_bytes()
        assert hashlib.sha256(data).hexdigest() == stage["sha256"]
    code, out, err = cli(stack, tmp_path, "export-images", "exported", str(tmp_path / "images"))
    assert code != 0 and "is not empty" in " ".join(err)


def test_register_a_builtin(stack: Stack, tmp_path: Path) -> None:
    code, out, err = cli(stack, tmp_path, "model", "register", "--builtin", "tiny_dag", "-o", "json")
    assert code == 0, (out, err)
    assert '"name": "tiny_dag"' in out
