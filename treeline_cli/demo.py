"""``treeline demo``: the whole path, end to end, with figures measured in this run.

Starts the stack, registers the built-in MobileNetV2 and deploys it three ways, each over
the same emulated devices: as the example SLA asks (the exact planner decides), split into
three FLOPs-balanced partitions (the walking skeleton's splitter, kept as a baseline), and
whole on the strongest node (the single-node baseline). The same random requests go through
each; one table shows the stages, the predicted and measured latency and the throughput, and
``report.html`` (:mod:`treeline_cli.report_html`) draws the same figures.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
from collections.abc import Callable
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import numpy as np

import model_zoo
from deployment_descriptors import example_path, example_sla
from node_engine.data_plane.service_client import Resolver, ServiceClient
from treeline_cli.inference import (
    InferenceReport,
    merge,
    random_inputs,
    run_requests,
    service_resolver,
    static_resolver,
)
from treeline_cli.report_html import write_report
from treeline_cli.root_client import RootClient
from treeline_cli.stack import Stack
from treeline_common.errors import NotFound

log = logging.getLogger(__name__)

PARTITIONED_SLA = example_path("mobilenet_v2")
SINGLE_SLA = example_path("mobilenet_v2_single")
THROUGHPUT_IN_FLIGHT = 4


def deploy_file(client: RootClient, path: Path, out: TextIO, timeout: float = 180.0) -> list[dict[str, Any]]:
    """Submit an SLA file, deploy each of its services and wait until all are RUNNING."""
    return deploy_sla(client, json.loads(path.read_text()), out, timeout)


def deploy_sla(client: RootClient, sla: dict[str, Any], out: TextIO,
               timeout: float = 180.0) -> list[dict[str, Any]]:
    """Apply an SLA document (idempotent: a second run updates, or leaves, the same applications),
    deploy each service that has no instance yet and wait until all are RUNNING."""
    services = []
    for application in client.apply(sla):
        for service_id in application["microservices"]:
            if not client.service(service_id).get("instances"):
                client.deploy_service(service_id)
            doc = client.wait_deployed(service_id, timeout=timeout, on_change=_status_writer(out, service_id))
            services.append(doc)
    return services


def register_once(client: RootClient, name: str, onnx_bytes: bytes, description: str) -> dict[str, Any]:
    """The model's latest version when it already holds these bytes, else a new version."""
    digest = hashlib.sha256(onnx_bytes).hexdigest()
    try:
        latest = client.model_version(name, "latest")
    except NotFound:
        latest = None
    if latest is not None and latest.get("sha256") == digest:
        return latest
    return client.register_model(name, onnx_bytes, description=description)


def _status_writer(out: TextIO, service_id: str) -> Callable[[dict[str, Any]], None]:
    """Writes one line on ``out`` for each status a service passes through while it deploys."""
    def write(doc: dict[str, Any]) -> None:
        detail = f" - {doc['status_detail']}" if doc.get("status_detail") else ""
        out.write(f"  {doc.get('microservice_name', service_id)}: {doc.get('status')}{detail}\n")
    return write


ROUNDS = 4


def _resolver(service: dict[str, Any], root_url: str | None) -> Resolver:
    """Follow the service through the root (a re-plan during the measurement moves its entry);
    a bare placement (no root given) is measured where it is."""
    if root_url and service.get("service_id"):
        return service_resolver(root_url, str(service["service_id"]))
    return static_resolver(service.get("placement") or service)


def _placement(service: dict[str, Any]) -> dict[str, Any]:
    return dict(service.get("placement") or service)


def measure_interleaved(services: dict[str, dict[str, Any]], n: int,
                        root_url: str | None = None) -> dict[str, dict[str, InferenceReport]]:
    """Send ``n`` requests (and ``n`` with several in flight) to each deployment, in ``ROUNDS``
    round-robin rounds, so a transient slowdown of the shared host hits every deployment alike
    instead of whichever happened to be measured at that moment. ``services`` are service
    documents (followed through ``root_url`` across re-plans) or bare placements."""
    runs: dict[str, dict[str, list[InferenceReport]]] = {
        k: {"latency": [], "throughput": []} for k in services}
    per_round = max(1, n // ROUNDS)
    for round_index in range(ROUNDS):
        for label, service in services.items():
            resolver = _resolver(service, root_url)
            runs[label]["latency"].append(run_requests(_placement(service), per_round, in_flight=1,
                                                       seed=round_index, resolver=resolver))
            runs[label]["throughput"].append(
                run_requests(_placement(service), per_round, in_flight=THROUGHPUT_IN_FLIGHT,
                             seed=100 + round_index, resolver=resolver))
    return {label: {kind: merge(reports) for kind, reports in kinds.items()} for label, kinds in runs.items()}


def output_difference(services: list[dict[str, Any]], root_url: str | None = None) -> float:
    """Max |a - b| between every deployment's outputs and the first's, for one shared input."""
    sample = next(random_inputs(_placement(services[0])["input"], 1, seed=7))
    outs = []
    for service in services:
        name = str(service.get("service_id", ""))
        with ServiceClient(_resolver(service, root_url), service=name) as client:
            outputs, _ = client.infer(sample)
        outs.append(outputs)
    return max(float(np.max(np.abs(o[k] - outs[0][k]))) for o in outs[1:] for k in o)


def run_demo(stack: Stack, out: TextIO, requests: int = 200, report: Path | None = None) -> dict[str, Any]:
    """Run the demo on a started stack, write its table on ``out`` and return (and save in the
    stack's data directory as ``demo_results.json``) the figures; draw them in an HTML report at
    ``report`` (default ``<data_dir>/report.html``)."""
    client = RootClient(stack.root_url)
    out.write("Exporting MobileNetV2 to ONNX (cached after the first run)...\n")
    onnx_bytes = model_zoo.cached_onnx("mobilenet_v2", stack.config.data_dir / "models")
    version = register_once(client, "mobilenet_v2", onnx_bytes, "built-in MobileNetV2")
    out.write(f"Registered mobilenet_v2 v{version['version']} ({version['size'] / 1e6:.1f} MB, "
              f"sha256 {version['sha256'][:12]})\n")
    plans = [
        ("ours: exact planner", PARTITIONED_SLA.name, json.loads(PARTITIONED_SLA.read_text())),
        ("FLOPs-balanced split", "the same SLA, flops-balanced profile",
         example_sla(PARTITIONED_SLA, "vision-flops-balanced", scheduler_profile="flops-balanced")),
        ("single strongest node", SINGLE_SLA.name, json.loads(SINGLE_SLA.read_text())),
    ]
    services: dict[str, dict[str, Any]] = {}
    for label, source, sla in plans:
        out.write(f"Deploying {label} ({source}) ... the first deployment also profiles the model on "
                  "each device class\n" if not services else f"Deploying {label} ({source}) ...\n")
        services[label] = deploy_sla(client, sla, out)[0]
    out.write(f"Sending {requests} requests one at a time and {requests} with {THROUGHPUT_IN_FLIGHT} "
              f"in flight to each, in {ROUNDS} interleaved rounds ...\n")
    results = measure_interleaved(services, requests, stack.root_url)
    diff = output_difference(list(services.values()), stack.root_url)
    out.write(render_table(services, results, diff))
    record = {
        "requests": requests,
        "in_flight": THROUGHPUT_IN_FLIGHT,
        "rounds": ROUNDS,
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.node()} ({platform.machine()}, {os.cpu_count()} CPUs, {platform.system()})",
        "max_abs_output_difference": diff,
        "deployments": {label: {"placement": services[label]["placement"],
                                "explanation": services[label].get("explanation"),
                                **{k: _summary(v) for k, v in results[label].items()}} for label in services},
    }
    (stack.config.data_dir / "demo_results.json").write_text(json.dumps(record, indent=2))
    target = report or stack.config.data_dir / "report.html"
    try:
        out.write(f"Report (plots, opens offline in a browser): {write_report(record, target)}\n")
    except OSError as exc:  # the figures are saved already; say why the picture is not
        out.write(f"Report not written to {target}: {exc.strerror or exc}\n")
    return record


def _summary(report: InferenceReport) -> dict[str, Any]:
    """The report without its raw samples (those stay out of the results file)."""
    return {k: v for k, v in asdict(report).items() if k not in ("latencies_ms", "samples")}


def _stage_rows(label: str, service: dict[str, Any], report: InferenceReport) -> list[str]:
    placement = service["placement"]
    lines = [f"{label}: {len(placement['stages'])} partition(s), strategy {placement.get('strategy', '?')}"]
    for stage in placement["stages"]:
        measured = report.stage_ms.get(stage["stage_key"], float("nan"))
        lines.append(
            f"  stage {stage['index']}  {str(stage.get('node_name', stage['node_id']))[:14]:<14} "
            f"{stage.get('profile', '?')!s:<12} {stage.get('flops', 0) / 1e6:>7.1f} MFLOPs  "
            f"cut {stage.get('cut_bytes', 0) / 1024:>6.1f} KB  compute {measured:>6.2f} ms measured, "
            f"{stage.get('predicted_compute_ms', float('nan')):>6.2f} predicted"
        )
    lines += [f"  not used: {name}: {reason}" for name, reason in unused_nodes(service)]
    return lines


def unused_nodes(service: dict[str, Any]) -> list[tuple[str, str]]:
    """(node name, scheduler's reason) for every node the service's plan does not use."""
    placement = service.get("placement") or {}
    explanation = service.get("explanation") or {}
    used = {s["node_id"] for s in placement.get("stages", [])}
    names = explanation.get("node_names") or {}
    return [(names.get(node_id, node_id), reason)
            for node_id, reason in sorted((explanation.get("filtered_or_unused") or {}).items())
            if node_id not in used]


def render_table(services: dict[str, dict[str, Any]], results: dict[str, dict[str, InferenceReport]],
                 diff: float) -> str:
    lines = [""]
    for label, service in services.items():
        lines += _stage_rows(label, service, results[label]["latency"]) + [""]
    labels = list(services)
    width = 24
    lines.append(f"{'end to end':<32}" + "".join(f"{label[:width]:>{width}}" for label in labels))
    lines.append("-" * (32 + width * len(labels)))

    def row(name: str, values: list[float]) -> None:
        lines.append(f"{name:<32}" + "".join(f"{v:>{width}.2f}" for v in values))

    row("predicted latency ms",
        [float((services[k]["placement"].get("predicted") or {}).get("latency_ms", np.nan)) for k in labels])
    row("p50 latency ms (1 in flight)", [results[k]["latency"].p50_ms for k in labels])
    row("p99 latency ms (1 in flight)", [results[k]["latency"].p99_ms for k in labels])
    row("throughput req/s (1 in flight)", [results[k]["latency"].throughput_rps for k in labels])
    row(f"throughput req/s ({THROUGHPUT_IN_FLIGHT} in flight)", [results[k]["throughput"].throughput_rps
                                                                 for k in labels])
    row(f"p50 latency ms ({THROUGHPUT_IN_FLIGHT} in flight)",
        [results[k]["throughput"].p50_ms for k in labels])
    lines += ["", f"max output difference between the deployments: {diff:.2e}", ""]
    return "\n".join(lines) + "\n"
