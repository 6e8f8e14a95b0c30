"""Scenario ``cascade``: a small model at the edge, the large one in the cloud.

Two devices: ``edge`` (the ``edge-gateway`` profile: a quarter of this host's speed, its uplink
to the cloud a 20 Mbit/s, 40 ms RTT WAN, charged on what it escalates) and ``cloud`` (full
speed). Requests enter at the edge; the large model's answer comes back on the data plane's
direct answer path (not charged as a link: emulated links are charged to what a stage
forwards). Per model pair (:mod:`model_zoo.cascade_pairs`), three services, each the SLA's
``model.cascade`` with the large model pinned to the cloud (``direct``):

- **cascade**: ``accuracy_floor`` = the large model's own probe accuracy (rounded down to
  0.001); the root calibrates the threshold on the probe set;
- **cloud-only**: threshold 1.0: every request crosses the WAN. The edge still runs the small
  model first; its compute (from the answer's timings) is subtracted from each latency, so
  the column is what shipping every input to the cloud costs;
- **edge-only**: threshold 0.0 (nothing is escalated).

Each is sent the pair's probe set (``quick``: the first 150) in interleaved rounds, one
request at a time, each input its own request (one client per service, warmed up with one
request that is not counted). Per request: latency (client side), whether it was escalated
(the answer's ``cascade:escalated`` timing), and whether it was right (labels; unlabelled
probes: agreement with the large model). WAN bytes are the tensor payloads that crossed the
edge-cloud link: an escalated request's input plus the large model's answer (counted from
the escalation flags and the tensors' sizes; headers excluded).

Pairs: ``--quick`` runs ``digits`` (scikit-learn models, seconds); the full run adds the
digits CNN with its distilled student (the headline ``cascade_*`` figures) and
EfficientNet-Lite0 fp32 / int8 on scikit-learn's sample photographs (``cascade_effnet_*``;
skipped, and said so, without the EfficientNet wheels).
"""

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TextIO

import numpy as np

from model_zoo.cascade_pairs import PAIRS, CascadePair
from model_zoo.cascade_probes import Probe, probe_set, run_model
from node_engine.data_plane.service_client import ServiceClient
from treeline_cli.demo import register_once
from treeline_cli.inference import service_resolver
from treeline_cli.root_client import RootClient
from treeline_cli.scenarios.base import NodeSpec, Scenario, StackSpec
from treeline_cli.scenarios.common import Column, deploy_all, direct, ml_sla, render_table
from treeline_cli.stack import Stack
from treeline_common.cascade import CASCADE_STAGE, ESCALATED_TIMING

EDGE, CLOUD = "edge", "cloud"
STACK = StackSpec((NodeSpec("cloud", CLOUD), NodeSpec("edge-gateway", EDGE)))
ROUNDS = 3
QUICK_PROBES = 150


def model_names(pair: CascadePair) -> tuple[str, str]:
    """The registry names of a pair's small and large model."""
    return f"cascade-{pair.key}-small", f"cascade-{pair.key}-large"


def cascade_sla(app: str, pair: CascadePair, **cascade: Any) -> dict[str, Any]:
    """A service deploying ``pair``'s large model in the cloud with its small one at the edge in front."""
    small, large = model_names(pair)
    inputs = [{"name": pair.input_name, "shape": list(pair.input_shape), "dtype": "float32"}]
    sla = ml_sla(app, large, inputs, max_partitions=1, constraints=[direct(CLOUD)])
    model = sla["applications"][0]["microservices"][0]["model"]
    model["cascade"] = {"small": small, "edge": {"node": EDGE}, "probe": pair.probe, **cascade}
    return sla


def register_pair(stack: Stack, pair: CascadePair) -> None:
    """Register the pair's small and large model (once: same bytes, same version)."""
    client = RootClient(stack.root_url)
    small, large = model_names(pair)
    register_once(client, small, pair.small, f"cascade scenario, edge: {pair.description}")
    register_once(client, large, pair.large, f"cascade scenario, cloud: {pair.description}")


@dataclass
class Answers:
    """What one alternative answered for the probe inputs, in probe order."""

    outputs: list[np.ndarray] = field(default_factory=list)
    escalated: list[bool] = field(default_factory=list)
    latency_ms: list[float] = field(default_factory=list)
    edge_ms: list[float] = field(default_factory=list)  # the edge stage's compute (its timings entry)


def probe_client(root_url: str, service: Mapping[str, Any],
                 warmup: Mapping[str, np.ndarray]) -> ServiceClient:
    """A client of the service's entry (followed via the root), connected by one uncounted request."""
    service_id = str(service["service_id"])
    client = ServiceClient(service_resolver(root_url, service_id), service=service_id)
    client.infer(warmup)
    return client


def send_probe(client: ServiceClient, pair: CascadePair, inputs: np.ndarray, into: Answers) -> None:
    """Send each probe input (a row of ``inputs``) as one request."""
    for i in range(len(inputs)):
        started = time.perf_counter()
        outputs, timings = client.infer({pair.input_name: inputs[i:i + 1]})
        into.latency_ms.append((time.perf_counter() - started) * 1000.0)
        into.outputs.append(outputs[pair.output_name])
        into.escalated.append(timings.get(ESCALATED_TIMING) == 1.0)
        into.edge_ms.append(sum(ms for key, ms in timings.items() if key.endswith(f"/{CASCADE_STAGE}")))


def _figures(answers: Answers, reference: np.ndarray, wan_bytes_per_escalation: int,
             without_edge: bool = False) -> dict[str, float]:
    latency = np.asarray(answers.latency_ms) - (np.asarray(answers.edge_ms) if without_edge else 0.0)
    right = np.asarray([int(np.argmax(o)) for o in answers.outputs]) == reference
    escalated = np.asarray(answers.escalated)
    return {"accuracy": float(np.mean(right)), "escalated share": float(np.mean(escalated)),
            "mean latency ms": float(latency.mean()), "p50 latency ms": float(np.percentile(latency, 50)),
            "p99 latency ms": float(np.percentile(latency, 99)),
            "WAN bytes per request": float(np.mean(escalated)) * wan_bytes_per_escalation}


def measure(stack: Stack, pair: CascadePair, probe: Probe, out: TextIO) -> dict[str, Any]:
    """Deploy the pair's three alternatives, send the probe in interleaved rounds, print its table."""
    register_pair(stack, pair)
    large_run = run_model(pair.large, probe)
    reference = probe.labels if probe.labels is not None else large_run.top1
    large_accuracy = float(np.mean(large_run.top1 == reference))
    # the floor must be reachable on the set the root calibrates on (the pair's whole probe set),
    # not only on the inputs sent here (--quick sends the first 150, where the large model may do better)
    calibration_set = probe_set(pair.probe)
    calibration_run = run_model(pair.large, calibration_set)
    calibration_reference = calibration_run.top1 if calibration_set.labels is None else calibration_set.labels
    floor = math.floor(float(np.mean(calibration_run.top1 == calibration_reference)) * 1000) / 1000
    slas = {"cascade": cascade_sla(f"cascade-{pair.key}", pair, accuracy_floor=floor),
            "cloud-only": cascade_sla(f"cascade-{pair.key}-cloud-only", pair, threshold=1.0),
            "edge-only": cascade_sla(f"cascade-{pair.key}-edge-only", pair, threshold=0.0)}
    services = deploy_all(stack, slas, out)
    answers = {label: Answers() for label in services}
    per_round = math.ceil(len(probe.inputs) / ROUNDS)
    clients = {label: probe_client(stack.root_url, service, {pair.input_name: probe.inputs[:1]})
               for label, service in services.items()}
    try:
        for start in range(0, len(probe.inputs), per_round):
            for label, client in clients.items():
                send_probe(client, pair, probe.inputs[start:start + per_round], answers[label])
    finally:
        for client in clients.values():
            client.close()
    wan = int(probe.inputs[0].nbytes + large_run.outputs[0].nbytes)
    figures = {label: _figures(answers[label], reference, wan, without_edge=label == "cloud-only")
               for label in services}
    calibration = (services["cascade"].get("explanation") or {}).get("cascade", {}).get("calibration") or {}
    columns = [Column(label, "edge + cloud" if label == "cascade" else label, figs)
               for label, figs in figures.items()]
    what = "accuracy" if probe.labels is not None else "agreement with the large model"
    notes = [f"{pair.description}; {len(probe.inputs)} {probe.name} inputs, {what}",
             f"accuracy floor {floor:.3f} (large model alone {large_accuracy:.3f}); calibrated threshold "
             f"{calibration.get('threshold', float('nan')):.4f}, expected escalated share "
             f"{calibration.get('escalated_share')}",
             "cloud-only / edge-only: the same pipeline at threshold 1.0 (the edge's small-model compute "
             "subtracted) / 0.0",
             f"WAN bytes: input + answer tensors ({wan:,} B) per escalated request"]
    out.write(render_table(f"cascade ({pair.key}): small model at the edge, large model in the cloud",
                           columns, notes) + "\n")
    return {"figures": figures, "accuracy_floor": floor, "calibration": calibration,
            "explanation": {label: (doc.get("explanation") or {}).get("cascade")
                            for label, doc in services.items()}}


def _headline(prefix: str, measured: Mapping[str, Any]) -> dict[str, float]:
    cascade, cloud, edge = (measured["figures"][k] for k in ("cascade", "cloud-only", "edge-only"))
    ratio = cascade["mean latency ms"] / cloud["mean latency ms"]
    return {f"{prefix}_accuracy": cascade["accuracy"],
            f"{prefix}_escalated_share": cascade["escalated share"],
            f"{prefix}_mean_latency_ratio_vs_cloud_only": ratio,
            f"{prefix}_accuracy_vs_cloud_only_pt": 100.0 * (cascade["accuracy"] - cloud["accuracy"]),
            f"{prefix}_p99_latency_ms": cascade["p99 latency ms"],
            f"{prefix}_cloud_only_p99_latency_ms": cloud["p99 latency ms"],
            f"{prefix}_edge_only_accuracy": edge["accuracy"],
            f"{prefix}_wan_bytes_per_request": cascade["WAN bytes per request"],
            f"{prefix}_wan_bytes_per_request_cloud_only": cloud["WAN bytes per request"],
            f"{prefix}_wan_bytes_per_request_edge_only": edge["WAN bytes per request"]}


def run(stack: Stack, out: TextIO, quick: bool) -> dict[str, Any]:
    """Measure each pair (module docstring); the first pair's figures are the headline ``cascade_*``."""
    keys = ("digits",) if quick else ("digits-cnn", "effnet")
    results: dict[str, Any] = {}
    figures: dict[str, float] = {}
    skipped: dict[str, str] = {}
    for index, key in enumerate(keys):
        try:
            pair = PAIRS[key]()
        except ImportError as exc:
            skipped[key] = f"not built: {exc}"
            out.write(f"cascade ({key}): skipped, {skipped[key]}\n")
            continue
        probe = pair.probe_set()
        if quick:
            probe = Probe(probe.name, probe.inputs[:QUICK_PROBES],
                          None if probe.labels is None else probe.labels[:QUICK_PROBES])
        results[key] = measure(stack, pair, probe, out)
        prefix = "cascade" if index == 0 else f"cascade_{key.replace('-', '_')}"
        figures.update(_headline(prefix, results[key]))
    return {"figures": figures, "prediction_errors": [], "plans": results, "skipped": skipped}


SCENARIO = Scenario("cascade", "small model at the edge answers when confident, escalates to the large "
                    "model in the cloud otherwise", STACK, run)
