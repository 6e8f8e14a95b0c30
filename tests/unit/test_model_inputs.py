"""A model's declared inputs: SLA validation of ``model.inputs``, the check against the model's
signature (pure, then at the cluster's job arrival and dry run, then at the root's apply), and
the vocabulary bound the cluster reads from an embedding Gather."""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import onnx
import pytest
from onnx import TensorProto, helper
from test_cluster_api import Cluster
from test_root_api import Root, ml_sla

from cluster_orchestrator import planning
from cluster_orchestrator.model_inputs import index_limits
from deployment_descriptors import InputSpec, parse_microservice, signature_problems, validate_microservice
from root_orchestrator.onnx_signature import extract_signature
from root_orchestrator.stores import open_stores
from treeline_common.errors import InvalidInput
from treeline_common.jobs import JobRequest, ModelRef

VOCAB = 50
IDS = {"name": "input_ids", "shape": [1, 8], "dtype": "int64"}
MASK = {"name": "attention_mask", "shape": [1, 8], "dtype": "int64"}


def two_input_model(seq: int | str = "seq") -> onnx.ModelProto:
    """ids [1, seq] int64 -> Gather(emb[VOCAB, 4]) * mask[..., None] -> out [1, seq, 4] float32."""
    ids = helper.make_tensor_value_info("input_ids", TensorProto.INT64, [1, seq])
    mask = helper.make_tensor_value_info("attention_mask", TensorProto.INT64, [1, seq])
    out = helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, seq, 4])
    emb = helper.make_tensor("emb", TensorProto.FLOAT, [VOCAB, 4], [float(i % 7) for i in range(VOCAB * 4)])
    axes = helper.make_tensor("axes", TensorProto.INT64, [1], [2])
    nodes = [helper.make_node("Cast", ["input_ids"], ["ids32"], to=TensorProto.INT32),
             helper.make_node("Gather", ["emb", "ids32"], ["e"]),
             helper.make_node("Cast", ["attention_mask"], ["m"], to=TensorProto.FLOAT),
             helper.make_node("Unsqueeze", ["m", "axes"], ["m3"]),
             helper.make_node("Mul", ["e", "m3"], ["out"])]
    graph = helper.make_graph(nodes, "two", [ids, mask], [out], initializer=[emb, axes])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def microservice(**model: Any) -> dict[str, Any]:
    return {"microservice_name": "enc", "microservice_namespace": "demo", "virtualization": "ml-model",
            "model": {"name": "minilm", **model}}


def problems(**model: Any) -> dict[str, str]:
    return {p["path"]: p["message"] for p in validate_microservice(microservice(**model))}


# -- SLA validation and views ------------------------------------------------------------------------

def test_inputs_list_is_valid_and_viewed_in_order() -> None:
    assert problems(inputs=[IDS, MASK]) == {}
    spec = parse_microservice(microservice(inputs=[IDS, MASK])).model
    assert spec is not None and spec.inputs_key == "inputs"
    assert spec.inputs == (InputSpec("input_ids", (1, 8), "int64"),
                           InputSpec("attention_mask", (1, 8), "int64"))
    assert (spec.input_name, spec.input_shape, spec.input_dtype) == ("input_ids", (1, 8), "int64")


def test_single_input_still_accepted() -> None:
    spec = parse_microservice(microservice(input=IDS)).model
    assert spec is not None and spec.inputs_key == "input"
    assert [i.name for i in spec.inputs or ()] == ["input_ids"]
    none = parse_microservice(microservice()).model
    assert none is not None and none.inputs is None and none.input_name is None


@pytest.mark.parametrize(("model", "path", "words"), [
    ({"inputs": [IDS, {**MASK, "name": "input_ids"}]}, "model.inputs[1].name", "duplicate input name"),
    ({"inputs": [{**IDS, "dtype": "int8"}]}, "model.inputs[0].dtype", "must be one of"),
    ({"inputs": []}, "model.inputs", "at least 1 item"),
    ({"inputs": [{**IDS, "shape": [1, 0]}]}, "model.inputs[0].shape[1]", ">= 1"),
    ({"inputs": [{"name": "x", "shape": [1]}]}, "model.inputs[0].dtype", "required"),
    ({"inputs": IDS}, "model.inputs", "of type array"),
    ({"inputs": [IDS, MASK], "input": IDS}, "model.input", "conflicts with model.inputs"),
    ({"inputs": [IDS], "input": {**IDS, "shape": [1, 9]}}, "model.input", "conflicts with model.inputs"),
])
def test_bad_inputs_name_the_field(model: dict[str, Any], path: str, words: str) -> None:
    found = problems(**model)
    assert path in found, found
    assert words in found[path]


def test_input_and_inputs_that_agree_are_accepted() -> None:
    assert problems(inputs=[IDS], input=dict(IDS)) == {}


# -- the signature check (pure) ----------------------------------------------------------------------

SIGNATURE = extract_signature(two_input_model())


def check(inputs: list[dict[str, Any]], key: str = "inputs",
          signature: dict[str, Any] | None = SIGNATURE) -> dict[str, str]:
    declared = [InputSpec.from_dict(i) for i in inputs]
    return {p["path"]: p["message"] for p in signature_problems(declared, key, signature)}


def test_matching_inputs_bind_symbolic_dims() -> None:
    assert SIGNATURE["inputs"][0]["shape"] == [1, "seq"]
    assert check([IDS, MASK]) == {}
    assert check([{**IDS, "shape": [1, 128]}, {**MASK, "shape": [1, 128]}]) == {}


@pytest.mark.parametrize(("inputs", "path", "message"), [
    ([IDS, {**MASK, "dtype": "float32"}], "model.inputs[1].dtype", "model expects int64, SLA says float32"),
    ([IDS, {**MASK, "name": "mask"}], "model.inputs[1].name",
     "model has no input 'mask'; its inputs are ['attention_mask', 'input_ids']"),
    ([IDS], "model.inputs", "missing model input 'attention_mask' (int64 [1, seq])"),
    ([IDS, {**MASK, "shape": [1, 8, 1]}], "model.inputs[1].shape", "model expects rank 2 [1, seq]"),
    ([IDS, {**MASK, "shape": [2, 8]}], "model.inputs[1].shape[0]",
     "model expects 1 (shape [1, seq]), SLA says 2"),
    ([IDS, {**MASK, "shape": [1, 9]}], "model.inputs[1].shape[1]",
     "model dimension 'seq' is bound to 8 by model.inputs[0].shape[1], SLA says 9"),
])
def test_mismatches_name_the_field_and_both_sides(inputs: list[dict[str, Any]], path: str,
                                                  message: str) -> None:
    found = check(inputs)
    assert path in found, found
    assert found[path].startswith(message)


def test_single_input_form_paths_and_unknown_signature() -> None:
    assert check([{**IDS, "dtype": "float32"}], key="input")["model.input.dtype"] == \
        "model expects int64, SLA says float32"
    assert check([{**IDS, "dtype": "float32"}], signature=None) == {}
    assert check([{**IDS, "dtype": "float32"}], signature={"inputs": ["junk"]}) == {}


def test_fixed_dims_must_match() -> None:
    fixed = extract_signature(two_input_model(seq=16))
    assert check([IDS, MASK], signature=fixed)["model.inputs[0].shape[1]"].startswith("model expects 16")


# -- the cluster: job arrival, dry run, placement specs ------------------------------------------------

class TwoInputCluster(Cluster):
    def __init__(self) -> None:
        super().__init__()
        self.root.model = self.model = two_input_model().SerializeToString()
        self.sha256 = hashlib.sha256(self.model).hexdigest()

    def signed_job(self, **model: Any) -> dict[str, Any]:
        body = self.job(**model)
        body["model"]["signature"] = extract_signature(onnx.load_model_from_string(self.model))
        return body


@pytest.fixture()
def two() -> TwoInputCluster:
    return TwoInputCluster()


def test_cluster_refuses_a_mismatched_job_on_arrival_and_in_a_dry_run(two: TwoInputCluster) -> None:
    bad = two.signed_job(inputs=[IDS, {**MASK, "dtype": "float32"}])
    for url in ("/api/service/s1/0", "/api/plan"):
        answer = two.http.post(url, json=bad)
        assert answer.status_code == 400, answer.get_json()
        details = {d["path"]: d["message"] for d in answer.get_json()["error"]["details"]}
        assert details == {"microservice.model.inputs[1].dtype": "model expects int64, SLA says float32"}
    assert two.core.book.list_deployments() == []


def test_dry_run_of_a_matching_job_plans(two: TwoInputCluster) -> None:
    two.node("server-1", "server")
    answer = two.http.post("/api/plan", json=two.signed_job(inputs=[IDS, MASK]))
    assert answer.status_code == 200 and answer.get_json()["schedulable"] is True, answer.get_json()


def test_placement_specs_carry_every_input_and_the_vocabulary(two: TwoInputCluster) -> None:
    model = two_input_model()
    assert index_limits(model) == {"input_ids": VOCAB}  # through the Cast; the mask indexes nothing
    job = JobRequest.from_dict(two.signed_job())  # no inputs declared: the signature's, dims bound to 1
    spec = planning.job_spec(job, "http://root.test:10000")
    assert planning.input_specs_for(spec, ("input_ids", "attention_mask"), model) == [
        {"name": "input_ids", "shape": [1, 1], "dtype": "int64", "index_limit": VOCAB},
        {"name": "attention_mask", "shape": [1, 1], "dtype": "int64"}]
    declared = planning.job_spec(JobRequest.from_dict(two.signed_job(inputs=[IDS, MASK])), "http://r")
    assert [s["shape"] for s in planning.input_specs_for(declared, (), model)] == [[1, 8], [1, 8]]
    unsigned = JobRequest.from_dict(two.job())
    assert planning.input_specs_for(planning.job_spec(unsigned, "http://r"), ("a", "b")) == [
        {"name": "a", "shape": [], "dtype": "float32"}, {"name": "b", "shape": [], "dtype": "float32"}]


# -- the root: apply refuses before writing ------------------------------------------------------------

@pytest.fixture()
def root(mongo_url: str) -> Iterator[Root]:
    stores = open_stores(mongo_url)
    yield Root(stores)
    stores.close()


def test_apply_refuses_inputs_the_registered_model_does_not_take(root: Root) -> None:
    root.register_model("two", two_input_model().SerializeToString())
    sla = ml_sla(name="two")
    model = sla["applications"][0]["microservices"][0]["model"]
    del model["input"]
    model["inputs"] = [IDS, {**MASK, "dtype": "float32"}]
    for url in ("/api/apply", "/api/application/", "/api/plan"):  # a dry run too: 400 at the field
        answer = root.http.post(url, json=sla)
        assert answer.status_code == 400, answer.get_json()
        details = {d["path"]: d["message"] for d in answer.get_json()["error"]["details"]}
        assert details == {"applications[0].microservices[0].model.inputs[1].dtype":
                           "model expects int64, SLA says float32"}
    assert root.http.get("/api/applications/").get_json() == []
    good = copy.deepcopy(sla)
    good["applications"][0]["microservices"][0]["model"]["inputs"] = [IDS, MASK]
    assert root.http.post("/api/apply", json=good).status_code == 200
    unknown = copy.deepcopy(sla)  # a model not registered yet is not checked here (the deploy says so)
    unknown["applications"][0]["microservices"][0]["model"]["name"] = "later"
    unknown["applications"][0]["application_name"] = "other"
    assert root.http.post("/api/apply", json=unknown).status_code == 200


def test_job_from_root_carries_the_signature_the_cluster_checks() -> None:
    signature = extract_signature(two_input_model())
    job = JobRequest(service_id="s", instance=0, microservice=microservice(inputs=[IDS, MASK]),
                     model=ModelRef(name="two", version=1, sha256="a" * 64, signature=signature))
    planning.check_job_inputs(job)  # agrees: no error
    with pytest.raises(InvalidInput, match="do not match") as info:
        planning.check_job_inputs(replace(job, microservice=microservice(inputs=[IDS])))
    assert [d["path"] for d in info.value.details] == ["microservice.model.inputs"]
