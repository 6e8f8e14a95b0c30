"""``treeline demo``: the whole path, end to end, with figures measured in this run.

Starts the stack, registers the built-in MobileNetV2, deploys it partitioned (the
example SLA, 3 partitions) and, as the baseline, whole on the strongest node (the
single-partition SLA), sends the same random requests through both, and prints one table.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any, TextIO

import numpy as np

import model_zoo
from node_engine.data_plane.client import TensorClient
from treeline_cli.inference import InferenceReport, random_inputs, run_requests
from treeline_cli.root_client import RootClient
from treeline_cli.stack import Stack

log = logging.getLogger(__name__)

EXAMPLES = Path(__file__).resolve().parent.parent / "deployment_descriptors" / "examples"
PARTITIONED_SLA = EXAMPLES / "mobilenet_v2.json"
SINGLE_SLA = EXAMPLES / "mobilenet_v2_single.json"
THROUGHPUT_IN_FLIGHT = 4


def deploy_file(client: RootClient, path: Path, out: TextIO, timeout: float = 180.0) -> list[dict[str, Any]]:
    """Submit an SLA file, deploy each of its services and wait until all are RUNNING."""
    return deploy_sla(client, json.loads(path.read_text()), out, timeout)


def deploy_sla(client: RootClient, sla: dict[str, Any], out: TextIO, timeout: float = 180.0) -> list[dict[str, Any]]:
    """Submit an SLA document, deploy each of its services and wait until all are RUNNING."""
    services = []
    for application in client.submit_sla(sla):
        for service_id in application["microservices"]:
            client.deploy_service(service_id)
            doc = client.wait_deployed(
                service_id,
                timeout=timeout,
                on_change=lambda d: out.write(
                    f"  {d.get('microservice_name', service_id)}: {d.get('status')}"
                    f"{' - ' + d['status_detail'] if d.get('status_detail') else ''}\n"
                ),
            )
            services.append(doc)
    return services


def measure(placement: dict[str, Any], n: int) -> dict[str, InferenceReport]:
    return {
        "latency": run_requests(placement, n, in_flight=1, seed=1),
        "throughput": run_requests(placement, n, in_flight=THROUGHPUT_IN_FLIGHT, seed=2),
    }


def output_difference(a: dict[str, Any], b: dict[str, Any]) -> float:
    """Max |a - b| over the outputs of the two pipelines for one shared random input."""
    sample = next(random_inputs(a["input"], 1, seed=7))
    outs = []
    for placement in (a, b):
        with TensorClient(placement["entry"]["endpoint"]) as client:
            outputs, _ = client.infer(placement["entry"]["stage_key"], sample, timeout=30)
        outs.append(outputs)
    return max(float(np.max(np.abs(outs[0][k] - outs[1][k]))) for k in outs[0])


def run_demo(stack: Stack, out: TextIO, requests: int = 200) -> dict[str, Any]:
    client = RootClient(stack.root_url)
    cache = stack.config.data_dir / "models"
    out.write("Exporting MobileNetV2 to ONNX (cached after the first run)...\n")
    onnx_bytes = model_zoo.cached_onnx("mobilenet_v2", cache)
    version = client.register_model("mobilenet_v2", onnx_bytes, description="built-in MobileNetV2")
    out.write(f"Registered mobilenet_v2 v{version['version']} ({version['size'] / 1e6:.1f} MB, "
              f"sha256 {version['sha256'][:12]})\n")
    out.write(f"Deploying {PARTITIONED_SLA.name} ...\n")
    partitioned = deploy_file(client, PARTITIONED_SLA, out)[0]
    out.write(f"Deploying {SINGLE_SLA.name} (baseline: whole model on the strongest node) ...\n")
    single = deploy_file(client, SINGLE_SLA, out)[0]
    out.write(f"Sending {requests} requests one at a time and {requests} with "
              f"{THROUGHPUT_IN_FLIGHT} in flight to each ...\n")
    results = {
        "partitioned": measure(partitioned["placement"], requests),
        "single": measure(single["placement"], requests),
    }
    diff = output_difference(partitioned["placement"], single["placement"])
    out.write(render_table(partitioned["placement"], single["placement"], results, diff))
    record = {
        "requests": requests,
        "max_abs_output_difference": diff,
        "partitioned": {"placement": partitioned["placement"],
                        **{k: asdict(v) for k, v in results["partitioned"].items()}},
        "single": {"placement": single["placement"], **{k: asdict(v) for k, v in results["single"].items()}},
    }
    (stack.config.data_dir / "demo_results.json").write_text(json.dumps(record, indent=2))
    return record


def render_table(
    partitioned: dict[str, Any], single: dict[str, Any], results: dict[str, dict[str, InferenceReport]], diff: float
) -> str:
    lines = ["", f"Partitioned MobileNetV2: {len(partitioned['stages'])} partitions "
             f"(strategy {partitioned.get('strategy', '?')})", ""]
    header = f"{'stage':>5}  {'node':<14} {'profile':<12} {'MFLOPs':>8} {'cut tensor KB':>14} {'stage ms':>9}"
    lines += [header, "-" * len(header)]
    stage_ms = results["partitioned"]["latency"].stage_ms
    for stage in partitioned["stages"]:
        lines.append(
            f"{stage['index']:>5}  {stage.get('node_name', stage['node_id'])[:14]:<14} "
            f"{stage.get('profile', '?'):<12} {stage.get('flops', 0) / 1e6:>8.1f} "
            f"{stage.get('cut_bytes', 0) / 1024:>14.1f} {stage_ms.get(stage['stage_key'], float('nan')):>9.2f}"
        )
    base = single["stages"][0]
    lines += ["", f"{'end to end':<30} {'partitioned':>12} {'single node':>12}",
              f"{'':<30} {'(3 nodes)':>12} {base.get('node_name', base['node_id'])[:12]:>12}", "-" * 56]
    rows = [
        ("p50 latency ms (1 in flight)", "latency", "p50_ms"),
        ("p99 latency ms (1 in flight)", "latency", "p99_ms"),
        ("throughput req/s (1 in flight)", "latency", "throughput_rps"),
        (f"throughput req/s ({THROUGHPUT_IN_FLIGHT} in flight)", "throughput", "throughput_rps"),
        (f"p50 latency ms ({THROUGHPUT_IN_FLIGHT} in flight)", "throughput", "p50_ms"),
    ]
    for label, run, attr in rows:
        a = getattr(results["partitioned"][run], attr)
        b = getattr(results["single"][run], attr)
        lines.append(f"{label:<30} {a:>12.2f} {b:>12.2f}")
    single_ms = results["single"]["latency"].stage_ms
    lines += ["", f"single-node compute ms per request: {next(iter(single_ms.values()), float('nan')):.2f}",
              f"max |partitioned - single| output difference: {diff:.2e}", ""]
    return "\n".join(lines) + "\n"
