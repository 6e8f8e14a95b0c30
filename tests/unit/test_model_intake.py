"""Model intake: symbolic inputs bound to the SLA's shapes, outputs without shapes completed,
external data uploaded as an archive, positions that cannot be cut never offered to a planner.

One small ``onnx.helper`` model per kind; each is accepted with the right figures or refused
with the field and the reason. (tests/e2e/test_model_intake_stack.py deploys the accepted kinds
through a real stack.)
"""

# ruff: noqa: F811 - ``root`` is the fixture imported from test_root_api
from __future__ import annotations

import io
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from test_root_api import Root, _error, root  # noqa: F401 - root is a fixture
from treeline_test_helpers import node_view

from cluster_orchestrator.models import ModelCache, declared_shapes, profile_key, profiles_for
from ml_scheduler.binding import BindingError, bind_input_shapes, complete_outputs, needs_binding
from ml_scheduler.costmodel import CostModel
from ml_scheduler.costmodel.builder import build_problem
from ml_scheduler.graph import analyze_model
from ml_scheduler.partition import balanced_cuts

OPSET = [helper.make_opsetid("", 17)]


def conv_model(input_shape: list[int | str], output_shape: list[int | str] | None = None) -> onnx.ModelProto:
    """x [N,3,H,W] -> Conv 3->8 (3x3, pad 1) -> Relu -> y [N,8,H,W]."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, input_shape)
    y = (helper.make_tensor_value_info("y", TensorProto.FLOAT, output_shape) if output_shape is not None
         else helper.make_empty_tensor_value_info("y"))
    weights = np.random.default_rng(0).standard_normal((8, 3, 3, 3)).astype(np.float32)
    w = numpy_helper.from_array(weights, "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["y"])]
    return helper.make_model(helper.make_graph(nodes, "conv", [x], [y], [w]), opset_imports=OPSET)


def custom_op_model() -> onnx.ModelProto:
    """One op of an unknown domain whose output declares nothing: its type cannot be inferred."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    graph = helper.make_graph([helper.make_node("Mystery", ["x"], ["y"], domain="com.example")], "custom",
                              [x], [helper.make_empty_tensor_value_info("y")])
    return helper.make_model(graph, opset_imports=[*OPSET, helper.make_opsetid("com.example", 1)])


def test_symbolic_dims_are_bound_before_analysis() -> None:
    model = conv_model(["N", 3, "H", "W"], ["N", 8, "H", "W"])
    assert needs_binding(model)
    unbound = analyze_model(model)
    bound_model = bind_input_shapes(model, {"x": [1, 3, 64, 64]})
    bound = analyze_model(bound_model)
    assert bound.total_flops == unbound.total_flops * 64 * 64  # every H*W position counted now
    assert bound.tensor_bytes["y"] == 8 * 64 * 64 * 4
    assert [d.dim_value for d in bound_model.graph.output[0].type.tensor_type.shape.dim] == [1, 8, 64, 64]
    assert model.graph.input[0].type.tensor_type.shape.dim[2].dim_param == "H"  # the argument is untouched
    session = ort.InferenceSession(bound_model.SerializeToString(), providers=["CPUExecutionProvider"])
    assert session.run(None, {"x": np.zeros((1, 3, 64, 64), np.float32)})[0].shape == (1, 8, 64, 64)


@pytest.mark.parametrize(("shape", "message"), [
    ([1, 3, 64], "has rank 4 in the model, the SLA declares [1, 3, 64]"),
    ([1, 4, 64, 64], "axis 1 is fixed to 3 in the model, the SLA declares 4"),
    ([1, 3, 0, 64], "every dimension must be positive"),
])
def test_a_shape_that_does_not_fit_is_refused_naming_the_input(shape: list[int], message: str) -> None:
    with pytest.raises(BindingError) as caught:
        bind_input_shapes(conv_model(["N", 3, "H", "W"]), {"x": shape})
    assert caught.value.path == "inputs[0].shape" and message in caught.value.message


def test_outputs_without_a_shape_are_inferred_and_an_unknown_type_is_refused() -> None:
    model = complete_outputs(conv_model([1, 3, 8, 8], output_shape=None))
    output = model.graph.output[0].type.tensor_type
    assert output.elem_type == TensorProto.FLOAT and [d.dim_value for d in output.shape.dim] == [1, 8, 8, 8]
    custom = custom_op_model()
    with pytest.raises(BindingError) as caught:
        complete_outputs(custom)
    assert caught.value.path == "outputs[0].dtype"


def test_the_model_cache_binds_keys_profiles_apart_and_completes_outputs() -> None:
    model = conv_model(["N", 3, "H", "W"], ["N", 8, "H", "W"])
    data = model.SerializeToString()
    cache = ModelCache()
    shapes = declared_shapes([{"name": "x", "shape": [1, 3, 32, 32], "dtype": "float32"}])
    loaded = cache.get("a" * 64, lambda: data, shapes)
    assert loaded.bound and loaded.sha256 != "a" * 64 and loaded.data is not None
    assert analyze_model(onnx.load_model_from_string(loaded.data)).total_flops == loaded.graph.total_flops
    assert cache.get("a" * 64, lambda: b"not read again", shapes) is loaded
    key = profile_key("rpi4", loaded)
    assert key.startswith("rpi4.b") and len(key) <= 64
    stored = {"rpi4": {"total_ms": 1.0}, key: {"total_ms": 9.0}}
    assert profiles_for(loaded, stored) == {"rpi4": {"total_ms": 9.0}}
    plain = cache.get("b" * 64, lambda: conv_model([1, 3, 8, 8], [1, 8, 8, 8]).SerializeToString())
    assert not plain.bound and plain.sha256 == "b" * 64
    assert profiles_for(plain, stored) == {"rpi4": {"total_ms": 1.0}}
    shapeless = cache.get("c" * 64, lambda: conv_model([1, 3, 8, 8], None).SerializeToString())
    assert shapeless.data is not None  # rewritten with the inferred output shape: partitions can be cut
    assert shapeless.model.graph.output[0].type.tensor_type.shape.dim[1].dim_value == 8


def sequence_model() -> onnx.ModelProto:
    """Relu -> SequenceConstruct -> SequenceAt -> Relu -> Relu: the sequence must not be a cut."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    zero = numpy_helper.from_array(np.array(0, dtype=np.int64), "zero")
    nodes = [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("SequenceConstruct", ["a"], ["s"]),
             helper.make_node("SequenceAt", ["s", "zero"], ["b"]), helper.make_node("Relu", ["b"], ["c"]),
             helper.make_node("Relu", ["c"], ["y"])]
    return helper.make_model(helper.make_graph(nodes, "seq", [x], [y], [zero]), opset_imports=OPSET)


def test_a_cut_through_a_sequence_is_never_offered() -> None:
    graph = analyze_model(sequence_model())
    assert [op.op_type for op in graph.ops] == ["Relu", "SequenceConstruct", "SequenceAt", "Relu", "Relu"]
    assert graph.uncuttable == {2}  # between SequenceConstruct and SequenceAt: the sequence crosses
    assert 2 not in graph.cut_positions()
    for k in (2, 3, 4):
        assert 2 not in balanced_cuts(graph, k)
    devices = [node_view("a"), node_view("b")]
    problem = build_problem(graph, devices, CostModel.from_profiles(graph, {}), max_partitions=2)
    assert np.isinf(problem.cut_bytes[2]) and np.isfinite(problem.cut_bytes[1])


# -- the root's upload -----------------------------------------------------------------------

def _external(tmp_path: Path) -> Path:
    folder = tmp_path / "exported"
    folder.mkdir()
    onnx.save(conv_model([1, 3, 8, 8], [1, 8, 8, 8]), str(folder / "conv.onnx"), save_as_external_data=True,
              all_tensors_to_one_file=True, location="conv.onnx.data", size_threshold=0)
    return folder / "conv.onnx"


def _tar(*files: tuple[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, data in files:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def test_a_model_with_external_data_is_uploaded_as_an_archive(root: Root, tmp_path: Path) -> None:
    from treeline_cli.model_files import upload_body

    path = _external(tmp_path)
    raw = root.http.post("/api/models/conv/versions", data=path.read_bytes())
    refused = _error(raw, 400, "INVALID_INPUT")["details"][0]
    assert "upload the .onnx and its data files as one archive" in refused["message"]
    body, content_type = upload_body(path)
    assert content_type == "application/x-tar"
    answer = root.http.post("/api/models/conv/versions", data=body, content_type=content_type)
    assert answer.status_code == 201, answer.get_json()
    version = answer.get_json()
    stored = b"".join(root.stores.artifacts.iter_bytes(version["sha256"]))
    whole = onnx.load_model_from_string(stored)  # one self-contained file: the weights are inside
    assert all(t.data_location != TensorProto.EXTERNAL for t in whole.graph.initializer)
    assert version["signature"]["outputs"][0]["shape"] == [1, 8, 8, 8]
    zipped = io.BytesIO()
    with zipfile.ZipFile(zipped, "w") as archive:
        archive.write(path, "conv.onnx")
        archive.write(path.parent / "conv.onnx.data", "conv.onnx.data")
    assert root.http.post("/api/models/conv/versions", data=zipped.getvalue(),
                          content_type="application/zip").status_code == 201


@pytest.mark.parametrize(("files", "message"), [
    ((("conv.onnx", None),), "names external data 'conv.onnx.data', which the archive lacks"),
    ((("a.onnx", None), ("b.onnx", None)), "exactly one .onnx file, found 2"),
    ((("../conv.onnx", None),), "unsafe path"),
])
def test_a_bad_archive_is_refused_with_its_reason(root: Root, tmp_path: Path,
                                                  files: tuple[tuple[str, None], ...], message: str) -> None:
    model = _external(tmp_path).read_bytes()
    answer = root.http.post("/api/models/conv/versions", data=_tar(*((name, model) for name, _ in files)),
                            content_type="application/x-tar")
    err = _error(answer, 400, "INVALID_INPUT")
    assert err["details"][0]["path"] == "body" and message in err["details"][0]["message"]
    assert root.http.get("/api/models/").get_json() == {"models": []}


def test_outputs_are_completed_at_upload_or_refused(root: Root) -> None:
    shapeless = conv_model([1, 3, 8, 8], None).SerializeToString()
    answer = root.http.post("/api/models/shapeless/versions", data=shapeless)
    assert answer.status_code == 201, answer.get_json()
    assert answer.get_json()["signature"]["outputs"][0] == {
        "name": "y", "dtype": "float32", "shape": [1, 8, 8, 8]}
    custom = custom_op_model()
    refused = root.http.post("/api/models/custom/versions", data=custom.SerializeToString())
    err = _error(refused, 400, "INVALID_INPUT")
    assert err["details"][0]["path"] == "outputs[0].dtype"
    assert "neither declared nor inferable" in err["details"][0]["message"]
