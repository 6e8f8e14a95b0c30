"""Our planner against the AMP4EC-style greedy split, predicted and measured on a real stack.

``python -m benchmarks.greedy [--quick]``. Starts a real stack (broker, root, cluster and
three emulated node engines: server, jetson-nano, rpi4), registers MobileNetV2 and deploys it
twice per scenario: with the default scheduler profile (the exact planner) and with the
``amp4ec-baseline`` profile (the greedy split). Each deployment gets the same number of random
requests, one in flight, in interleaved rounds; the ratio is greedy / ours, so > 1 means ours is faster.

Scenarios: inputs arrive at the caller (no source), and inputs arrive on the rpi4 (the
Neurosurgeon setting: the SLA names the rpi4 as the source, requests enter there through a
relay, and the input must cross its 50 Mbit/s uplink to reach any other node).
"""

from __future__ import annotations

import io
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import model_zoo
from benchmarks.report import benchmark_parser, print_table
from deployment_descriptors import example_sla
from treeline_cli.demo import deploy_sla, measure_interleaved
from treeline_cli.root_client import RootClient
from treeline_cli.stack import StackConfig, pick_ports, start_stack

EXAMPLE = "mobilenet_v2"
SCENARIOS: dict[str, dict[str, Any]] = {"": {}, "_source_rpi4": {"source": {"node": "rpi4-1"}}}


def run(quick: bool = False, cache_dir: Path | None = None) -> dict[str, Any]:
    requests = 40 if quick else 150
    result: dict[str, Any] = {"greedy_requests_per_deployment": requests}
    with tempfile.TemporaryDirectory(prefix="treeline-bench-") as tmp:
        stack = start_stack(pick_ports(StackConfig(data_dir=Path(tmp), nodes=3, telemetry_interval=1.0)))
        try:
            stack.wait_ready(timeout=90)
            client = RootClient(stack.root_url)
            onnx_bytes = model_zoo.cached_onnx("mobilenet_v2", cache_dir or Path(tmp) / "models")
            client.register_model("mobilenet_v2", onnx_bytes)
            log = io.StringIO()
            for suffix, extra in SCENARIOS.items():
                ours_service = deploy_sla(client, example_sla(EXAMPLE, f"ours{suffix}", **extra), log)[0]
                greedy_service = deploy_sla(client, example_sla(EXAMPLE, f"greedy{suffix}",
                                                                scheduler_profile="amp4ec-baseline", **extra),
                                            log)[0]
                ours, greedy = ours_service["placement"], greedy_service["placement"]
                # interleaved rounds: host noise hits both deployments alike; requests follow each
                # service through the root should the cluster re-plan it meanwhile
                measured = {name: reports["latency"] for name, reports in
                            measure_interleaved({"ours": ours_service, "greedy": greedy_service}, requests,
                                                stack.root_url).items()}
                result[f"latency_ratio_vs_greedy{suffix}_predicted"] = (
                    greedy["predicted"]["latency_ms"] / ours["predicted"]["latency_ms"])
                result[f"latency_ratio_vs_greedy{suffix}"] = (
                    measured["greedy"].p50_ms / measured["ours"].p50_ms)
                for name, placement in (("ours", ours), ("greedy", greedy)):
                    result[f"{name}{suffix}_predicted_latency_ms"] = placement["predicted"]["latency_ms"]
                    result[f"{name}{suffix}_measured_p50_ms"] = measured[name].p50_ms
                    result[f"{name}{suffix}_stages"] = "+".join(
                        f"{s['node_name']}" for s in placement["stages"])
        finally:
            stack.stop()
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = benchmark_parser(__doc__)
    args = parser.parse_args(argv)
    print_table(sorted(run(args.quick).items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
