"""What the Open Inference Protocol (KServe v2 REST) entry adds over the zmq data plane.

Run ``python -m benchmarks.inference_v2 [--quick] [--json PATH]``. A real stack on loopback
(Mosquitto, root, cluster, one ``server`` node engine), MobileNetV2 (1x3x224x224 float32 in,
1x1000 out) deployed whole on the node. The same inputs are sent one at a time:

- through the data plane's ``ServiceClient`` (zmq framing, straight to the entry node): the
  baseline a Python caller gets;
- through ``POST <cluster>/v2/models/<service>/infer`` with the binary tensor data extension
  (what Triton's and KServe's clients send for large tensors), and with JSON tensors (what curl
  sends), over one keep-alive HTTP session.

``v2_http_overhead_ms`` [<= 1] is the p50 of the binary v2 path minus the p50 of the zmq path
(the cluster's HTTP parsing, the v2 codec and one more loopback hop); ``v2_json_overhead_ms`` the
same for JSON tensors (600 KB of numbers as text: it is the format's cost, shown for honesty).
"""

from __future__ import annotations

import json
import logging
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import requests

from benchmarks.report import add_json_option, benchmark_parser, report
from model_zoo import cached_onnx
from node_engine.data_plane.service_client import ServiceClient
from treeline_cli.broker import mosquitto_binary
from treeline_cli.inference import service_resolver
from treeline_cli.root_client import RootClient
from treeline_cli.stack import StackConfig, pick_ports, start_stack
from treeline_common.inference_v2 import HEADER_LENGTH

log = logging.getLogger(__name__)

GOALS = {"v2_http_overhead_ms": "<= 1"}
SHAPE = (1, 3, 224, 224)


def _sla() -> dict[str, Any]:
    model = {"name": "mobilenet", "version": "latest", "objective": "latency", "max_partitions": 1,
             "input": {"name": "input", "shape": list(SHAPE), "dtype": "float32"}}
    service = {"microserviceID": "", "microservice_name": "mobilenet", "microservice_namespace": "bench",
               "virtualization": "ml-model", "memory": 256, "vcpus": 1, "vgpus": 0, "vtpus": 0,
               "bandwidth_in": 0, "bandwidth_out": 0, "storage": 0, "state": "", "added_files": [],
               "model": model, "constraints": [], "connectivity": []}
    return {"sla_version": "v2.0", "customerID": "Admin",
            "applications": [{"applicationID": "", "application_name": "v2bench",
                              "application_namespace": "bench", "application_desc": "v2 overhead",
                              "microservices": [service]}]}


def _p50_ms(send: Callable[[], Any], n: int) -> float:
    times = []
    for _ in range(n):
        started = time.perf_counter()
        send()
        times.append((time.perf_counter() - started) * 1e3)
    return float(statistics.median(times))


def run(quick: bool = False) -> dict[str, Any]:
    """Both HTTP servers the cluster can run: werkzeug (loopback development default) and
    waitress (``--production``); the figures without prefix are waitress's."""
    dev = measure(quick, production=False)
    prod = measure(quick, production=True)
    return {"mode": "quick" if quick else "full", "goals": GOALS, **prod,
            **{f"werkzeug_{k}": v for k, v in dev.items() if k != "requests"}}


def measure(quick: bool, production: bool) -> dict[str, Any]:
    """One stack, the cluster under waitress when ``production``; see the module docstring."""
    n = 30 if quick else 200
    x = np.random.default_rng(0).random(SHAPE, dtype=np.float32)
    with tempfile.TemporaryDirectory(prefix="treeline-v2-") as tmp:
        config = pick_ports(StackConfig(data_dir=Path(tmp), nodes=1, profiles=("server",), node_labels={},
                                        broker_kind="mosquitto" if mosquitto_binary() else "amqtt",
                                        log_level="WARNING",
                                        cluster_args=("--production",) if production else ()))
        stack = start_stack(config)
        try:
            stack.wait_ready(timeout=90)
            root = RootClient(stack.root_url, timeout=60)
            root.register_model("mobilenet", cached_onnx("mobilenet_v2", Path(tmp) / "models"))
            [app] = root.submit_sla(_sla())
            [service_id] = app["microservices"]
            root.deploy_service(service_id)
            root.wait_deployed(service_id, timeout=120)
            url = f"{stack.cluster_url}/v2/models/{service_id}/infer"
            head = json.dumps({"inputs": [{"name": "input", "shape": list(SHAPE), "datatype": "FP32",
                                           "parameters": {"binary_data_size": x.nbytes}}],
                               "parameters": {"binary_data_output": True}}).encode()
            binary_body = head + x.tobytes()
            json_body = {"inputs": [{"name": "input", "shape": list(SHAPE), "datatype": "FP32",
                                     "data": x.reshape(-1).tolist()}]}
            session = requests.Session()
            headers = {HEADER_LENGTH: str(len(head)), "Content-Type": "application/octet-stream"}

            def v2_binary() -> None:
                answer = session.post(url, data=binary_body, headers=headers, timeout=60)
                answer.raise_for_status()

            def v2_json() -> None:
                session.post(url, json=json_body, timeout=60).raise_for_status()

            with ServiceClient(service_resolver(stack.root_url, service_id), service=service_id) as client:
                def zmq() -> None:
                    [outcome] = client.infer_many([{"input": x}], max_in_flight=1)
                    if outcome.error is not None:
                        raise outcome.error

                for warm in (zmq, v2_binary, v2_json):
                    _p50_ms(warm, 5)
                zmq_ms = _p50_ms(zmq, n)
                binary_ms = _p50_ms(v2_binary, n)
                json_ms = _p50_ms(v2_json, max(5, n // 10))
                zmq_again = _p50_ms(zmq, n)  # drift check: the baseline measured on both sides
        finally:
            stack.stop()
    baseline = min(zmq_ms, zmq_again)
    return {"requests": n, "zmq_p50_ms": round(baseline, 3), "v2_binary_p50_ms": round(binary_ms, 3),
            "v2_json_p50_ms": round(json_ms, 3), "v2_http_overhead_ms": round(binary_ms - baseline, 3),
            "v2_json_overhead_ms": round(json_ms - baseline, 3),
            "zmq_p50_drift_ms": round(abs(zmq_again - zmq_ms), 3)}


def main(argv: Sequence[str] | None = None) -> int:
    parser = benchmark_parser(__doc__, "30 requests per path instead of 200")
    add_json_option(parser, "inference_v2")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for quiet in ("node_engine", "treeline_cli.stack", "treeline_cli.broker"):
        logging.getLogger(quiet).setLevel(logging.WARNING)
    report(run(args.quick), args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
