"""Scenario ``cascade`` end to end: a real stack (broker, root, cluster, an emulated rpi4 ``edge``
and a ``cloud`` node, as processes), the digits pair of :mod:`model_zoo.digits_pair`.

The SLA asks for an accuracy floor; the root calibrates the threshold on the digits' held-out
split, the cluster puts the small model on the edge (the entry) and the large one in the cloud.
Every probe image is then one request: the escalated ones are exactly those whose small-model
confidence is below the calibrated threshold, each answer equals the small model's (answered
at the edge) or the large model's (escalated) output within 1e-5, the escalated share is the
calibration's, and the cascade's accuracy on the probe set is at least the floor. The cluster's
Open Inference Protocol URL answers through the cascade too.
"""

from __future__ import annotations

import io
from collections.abc import Iterator

import numpy as np
import pytest
import requests

from model_zoo.cascade_pairs import digits_sklearn
from model_zoo.cascade_probes import digits_probe, run_model
from treeline_cli.scenarios.base import add_nodes
from treeline_cli.scenarios.cascade import (
    CLOUD,
    EDGE,
    STACK,
    Answers,
    cascade_sla,
    probe_client,
    register_pair,
    send_probe,
)
from treeline_cli.scenarios.common import deploy_all
from treeline_cli.stack import Stack, StackConfig, pick_ports, start_stack

pytestmark = pytest.mark.integration

FLOOR = 0.95


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    config = pick_ports(StackConfig(data_dir=tmp_path_factory.mktemp("stack"), nodes=0,
                                    telemetry_interval=0.5, node_threads=1, node_labels={}))
    running = start_stack(config)
    try:
        add_nodes(running, STACK)
        running.wait_ready(timeout=60)
        yield running
    finally:
        running.stop()


def test_the_cascade_answers_at_the_edge_when_confident_and_meets_its_floor(stack: Stack) -> None:
    pair = digits_sklearn()
    register_pair(stack, pair)
    sla = cascade_sla("cascade-e2e", pair, accuracy_floor=FLOOR)
    service = deploy_all(stack, {"cascade": sla}, io.StringIO())["cascade"]
    placement, why = service["placement"], service["explanation"]["cascade"]
    assert placement["cascade"]["node_name"] == EDGE and placement["entry"]["stage_key"].endswith("/900")
    assert [s["node_name"] for s in placement["stages"]] == [CLOUD]
    calibration = why["calibration"]
    threshold = calibration["threshold"]
    assert calibration["met"] and calibration["accuracy"] >= FLOOR and 0.0 < threshold < 1.0, why
    assert placement["cascade_rule"]["threshold"] == threshold

    probe = digits_probe()
    answers = Answers()
    with probe_client(stack.root_url, service, {pair.input_name: probe.inputs[:1]}) as client:
        send_probe(client, pair, probe.inputs, answers)
    edge_run, cloud_run = run_model(pair.small, probe), run_model(pair.large, probe)
    expected = edge_run.confidence < threshold
    escalated = np.asarray(answers.escalated)
    near = np.abs(edge_run.confidence - threshold) < 1e-6  # float noise at the boundary may go either way
    assert np.array_equal(escalated[~near], expected[~near])
    assert abs(escalated.mean() - calibration["escalated_share"]) <= 0.01 + near.mean()
    assert 0.05 < escalated.mean() < 0.6, escalated.mean()
    for i, output in enumerate(answers.outputs):
        reference = cloud_run.outputs[i] if escalated[i] else edge_run.outputs[i]
        np.testing.assert_allclose(output, reference, atol=1e-5, err_msg=f"probe input {i}")
    accuracy = float(np.mean([int(np.argmax(o)) for o in answers.outputs] == probe.labels))
    assert accuracy >= FLOOR, accuracy

    # the cluster's Open Inference Protocol URL fronts the cascade too (its entry is the edge stage)
    first = int(np.argmax(escalated))  # an input the edge escalates
    body = {"inputs": [{"name": pair.input_name, "shape": list(pair.input_shape), "datatype": "FP32",
                        "data": probe.inputs[first].ravel().tolist()}]}
    url = f"{stack.cluster_url}/v2/models/{service['service_id']}/infer"
    reply = requests.post(url, json=body, timeout=30)
    assert reply.status_code == 200, reply.text
    output = np.asarray(reply.json()["outputs"][0]["data"], dtype=np.float32)
    np.testing.assert_allclose(output, cloud_run.outputs[first].ravel(), atol=1e-5)
