"""Scenario ``cascade``: a small model at the edge, the large one in the cloud.

Two devices: ``edge`` (the ``edge-gateway`` profile: a quarter of this host's speed, its uplink
to the cloud a 20 Mbit/s, 40 ms RTT WAN, charged on what it escalates) and ``cloud`` (full
speed). Requests enter at the edge; the large model's answer comes back on the data plane's
direct answer path (not charged as a link: emulated links are charged to what a stage forwards).
Three services, each the SLA's ``model.cascade`` with the large
model pinned to the cloud (``direct``):

- **cascade**: ``accuracy_floor`` = the large model's probe accuracy minus 0.01 (equal within
  one point); the root calibrates the threshold on the probe set;
- **cloud-only**: threshold 1.0 (every request is escalated: the edge runs the small model
  too, a fraction of a millisecond here, then ships the input over the WAN);
- **edge-only**: threshold 0.0 (nothing is escalated).

Each is sent the probe set (the digits' 450 held-out images; ``quick``: the first 150) in
interleaved rounds, one request at a time, each image its own request (one client per
service, warmed up with one request that is not counted). Per request: latency (client side),
whether it was escalated (the answer's ``cascade:escalated`` timing), and
whether it was right (labels). WAN bytes are the tensor payloads that crossed the edge-cloud
link: an escalated request's input plus the large model's answer (counted from the escalation
flags and the tensors' sizes; headers excluded).

Models: :mod:`model_zoo.digits_pair` (a logistic regression at the edge, an MLP in the cloud,
built with scikit-learn in seconds). The digits CNN with its distilled student and
EfficientNet-Lite0 are not wired in yet.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TextIO

import numpy as np

from model_zoo import digits_pair
from model_zoo.cascade_probes import Probe, digits_probe, run_model
from node_engine.data_plane.service_client import ServiceClient
from treeline_cli.demo import register_once
from treeline_cli.inference import service_resolver
from treeline_cli.root_client import RootClient
from treeline_cli.scenarios.base import NodeSpec, Scenario, StackSpec
from treeline_cli.scenarios.common import Column, deploy_all, direct, ml_sla, render_table
from treeline_cli.stack import Stack
from treeline_common.cascade import ESCALATED_TIMING

EDGE, CLOUD = "edge", "cloud"
STACK = StackSpec((NodeSpec("cloud", CLOUD), NodeSpec("edge-gateway", EDGE)))
SMALL, LARGE = "cascade-small", "cascade-large"
ROUNDS = 3
QUICK_PROBES = 150


def cascade_sla(app: str, **cascade: Any) -> dict[str, Any]:
    """A service deploying :data:`LARGE` in the cloud with :data:`SMALL` at the edge in front of it."""
    inputs = [{"name": digits_pair.INPUT, "shape": digits_pair.INPUT_SHAPE, "dtype": "float32"}]
    sla = ml_sla(app, LARGE, inputs, max_partitions=1, constraints=[direct(CLOUD)])
    model = sla["applications"][0]["microservices"][0]["model"]
    model["cascade"] = {"small": SMALL, "edge": {"node": EDGE}, **cascade}
    return sla


def register_pair(stack: Stack) -> tuple[bytes, bytes]:
    """Register the small and the large model (once: same bytes, same version); their bytes."""
    client = RootClient(stack.root_url)
    small, large = digits_pair.small_model(), digits_pair.large_model()
    register_once(client, SMALL, small, "cascade scenario: logistic regression on the digits (edge)")
    register_once(client, LARGE, large, "cascade scenario: MLP on the digits (cloud)")
    return small, large


@dataclass
class Answers:
    """What one alternative answered for the probe inputs, in probe order."""

    outputs: list[np.ndarray] = field(default_factory=list)
    escalated: list[bool] = field(default_factory=list)
    latency_ms: list[float] = field(default_factory=list)


def probe_client(root_url: str, service: Mapping[str, Any], warmup: np.ndarray) -> ServiceClient:
    """A client of the service's entry (followed via the root), connected by one uncounted request."""
    service_id = str(service["service_id"])
    client = ServiceClient(service_resolver(root_url, service_id), service=service_id)
    client.infer({digits_pair.INPUT: warmup})
    return client


def send_probe(client: ServiceClient, inputs: np.ndarray, into: Answers) -> None:
    """Send each probe input (a row of ``inputs``) as one request."""
    for i in range(len(inputs)):
        started = time.perf_counter()
        outputs, timings = client.infer({digits_pair.INPUT: inputs[i:i + 1]})
        into.latency_ms.append((time.perf_counter() - started) * 1000.0)
        into.outputs.append(outputs[digits_pair.OUTPUT])
        into.escalated.append(timings.get(ESCALATED_TIMING) == 1.0)


def _figures(answers: Answers, labels: np.ndarray, wan_bytes_per_escalation: int) -> dict[str, float]:
    latency = np.asarray(answers.latency_ms)
    right = np.asarray([int(np.argmax(o)) for o in answers.outputs]) == labels
    escalated = np.asarray(answers.escalated)
    return {"accuracy": float(np.mean(right)), "escalated share": float(np.mean(escalated)),
            "mean latency ms": float(latency.mean()), "p50 latency ms": float(np.percentile(latency, 50)),
            "p99 latency ms": float(np.percentile(latency, 99)),
            "WAN bytes per request": float(np.mean(escalated)) * wan_bytes_per_escalation}


def run(stack: Stack, out: TextIO, quick: bool) -> dict[str, Any]:
    """Deploy the three alternatives, send the probe set in interleaved rounds, print one table."""
    small, large = register_pair(stack)
    probe = digits_probe()
    probe = Probe(probe.name, probe.inputs[:QUICK_PROBES], probe.labels) if quick else probe
    assert probe.labels is not None
    labels = probe.labels[:len(probe.inputs)]
    reference = run_model(large, probe)
    large_accuracy = float(np.mean(reference.top1 == labels))
    floor = math.floor((large_accuracy - 0.01) * 1000) / 1000
    slas = {"cascade": cascade_sla("cascade", accuracy_floor=floor),
            "cloud-only": cascade_sla("cascade-cloud-only", threshold=1.0),
            "edge-only": cascade_sla("cascade-edge-only", threshold=0.0)}
    services = deploy_all(stack, slas, out)
    answers = {label: Answers() for label in services}
    per_round = math.ceil(len(probe.inputs) / ROUNDS)
    clients = {label: probe_client(stack.root_url, service, probe.inputs[:1])
               for label, service in services.items()}
    try:
        for start in range(0, len(probe.inputs), per_round):
            for label, client in clients.items():
                send_probe(client, probe.inputs[start:start + per_round], answers[label])
    finally:
        for client in clients.values():
            client.close()
    wan = int(probe.inputs[0].nbytes + reference.outputs[0].nbytes)
    figures = {label: _figures(answers[label], labels, wan) for label in services}
    calibration = (services["cascade"].get("explanation") or {}).get("cascade", {}).get("calibration") or {}
    columns = [Column(label, "edge + cloud" if label == "cascade" else label, figs)
               for label, figs in figures.items()]
    cascade, cloud, edge = figures["cascade"], figures["cloud-only"], figures["edge-only"]
    notes = [f"accuracy floor {floor:.3f} (large model alone {large_accuracy:.3f} on {len(labels)} digits); "
             f"calibrated threshold {calibration.get('threshold')}, expected escalated share "
             f"{calibration.get('escalated_share')}",
             "cloud-only / edge-only: the same pipeline at threshold 1.0 / 0.0",
             f"WAN bytes: input + answer tensors ({wan} B) per escalated request"]
    title = "cascade: small model at the edge, large model in the cloud"
    out.write(render_table(title, columns, notes) + "\n")
    small_check = run_model(small, probe)
    return {
        "figures": {
            "cascade_accuracy": cascade["accuracy"],
            "cascade_escalated_share": cascade["escalated share"],
            "cascade_mean_latency_ratio_vs_cloud_only": cascade["mean latency ms"] / cloud["mean latency ms"],
            "cascade_p99_latency_ms": cascade["p99 latency ms"],
            "cascade_cloud_only_accuracy": cloud["accuracy"],
            "cascade_edge_only_accuracy": edge["accuracy"],
            "cascade_wan_bytes_per_request": cascade["WAN bytes per request"],
            "cascade_wan_bytes_per_request_cloud_only": cloud["WAN bytes per request"],
            "cascade_wan_bytes_per_request_edge_only": edge["WAN bytes per request"],
        },
        "prediction_errors": [],
        "plans": {label: {"figures": figs,
                          "explanation": (services[label].get("explanation") or {}).get("cascade")}
                  for label, figs in figures.items()},
        "accuracy_floor": floor,
        "small_model_probe_accuracy": float(np.mean(small_check.top1 == labels)),
    }


SCENARIO = Scenario("cascade", "small model at the edge answers when confident, escalates to the large "
                    "model in the cloud otherwise", STACK, run)
