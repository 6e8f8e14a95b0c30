"""What the Open Inference Protocol (KServe v2 REST) entries add over the zmq data plane.

Run ``python -m benchmarks.inference_v2 [--quick] [--json PATH]``. A real stack on loopback
(Mosquitto, root, cluster, one ``native`` node engine started with ``--v2-port``: a one-stage
deployment there runs in the node's HTTP thread, :class:`node_engine.v2_http.LocalLane`), MobileNetV2
(1x3x224x224 float32 in, 1x1000 out) deployed whole on the node. The same input is sent one
request at a time, the paths taking turns request by request (so a loaded host's drift falls on
all of them alike):

- through the data plane's ``ServiceClient`` (zmq framing, straight to the entry node): the
  baseline a Python caller gets;
- through ``POST <cluster>/v2/models/<service>/infer``, the stable address (the cluster forwards
  over the data plane), and ``POST <entry node>:<v2 port>/v2/models/<service>/infer``, the fast
  path (one loopback zmq hop inside the node), each with the binary tensor data extension (what
  Triton's and KServe's clients send for large tensors) and with JSON tensors (what curl sends).

The HTTP client is the standard library's ``http.client`` on one keep-alive connection per path,
so the figures are the servers'; ``v2_node_binary_requests_p50_ms`` is the node path through the
``requests`` library, whose own cost on this host is the difference.

``v2_http_overhead_ms`` [<= 1] is the smallest p50 of a binary v2 path minus the p50 of the zmq
path (``v2_http_overhead_path`` names it); ``v2_cluster_http_overhead_ms`` and
``v2_node_http_overhead_ms`` are each path's; ``*_json_overhead_ms`` the same for JSON tensors
(600 KB of numbers as text: the format's cost, shown for honesty). The cluster runs under waitress
(``--production``); ``werkzeug_*`` is the same stack under werkzeug's development server.
"""

from __future__ import annotations

import http.client
import json
import logging
import statistics
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

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
from treeline_common.netutil import free_port

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


Sender = Callable[[], Any]


def _interleaved_p50_ms(senders: Mapping[str, Sender], n: int) -> dict[str, float]:
    """p50 ms of each sender over ``n`` rounds, every round calling each sender once in turn."""
    times: dict[str, list[float]] = {name: [] for name in senders}
    for _ in range(n):
        for name, send in senders.items():
            started = time.perf_counter()
            send()
            times[name].append((time.perf_counter() - started) * 1e3)
    return {name: float(statistics.median(values)) for name, values in times.items()}


def _poster(url: str, body: bytes, headers: Mapping[str, str]) -> Sender:
    """POST ``body`` to ``url`` on one keep-alive ``http.client`` connection; raises unless 200."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.netloc, timeout=60)

    def send() -> bytes:
        conn.request("POST", parts.path, body=body, headers=dict(headers))
        answer = conn.getresponse()
        content = answer.read()
        if answer.status != 200:
            raise RuntimeError(f"{url}: {answer.status} {content[:300]!r}")
        return content
    return send


def run(quick: bool = False) -> dict[str, Any]:
    """The stack under waitress (with the entry node's path), then under werkzeug (cluster only)."""
    prod = measure(quick, production=True)
    dev = measure(quick, production=False)
    paths = {"cluster": prod["v2_cluster_http_overhead_ms"], "node": prod["v2_node_http_overhead_ms"]}
    best = min(paths, key=lambda k: paths[k])
    return {"mode": "quick" if quick else "full", "goals": GOALS, **prod,
            "v2_http_overhead_ms": paths[best], "v2_http_overhead_path": best,
            **{f"werkzeug_{k}": v for k, v in dev.items() if k.startswith(("zmq", "v2_cluster"))}}


def measure(quick: bool, production: bool) -> dict[str, Any]:
    """One stack, the cluster under waitress when ``production``; see the module docstring."""
    n = 30 if quick else 200
    x = np.random.default_rng(0).random(SHAPE, dtype=np.float32)
    v2_port = free_port()
    with tempfile.TemporaryDirectory(prefix="treeline-v2-") as tmp:
        config = pick_ports(StackConfig(data_dir=Path(tmp), nodes=1, profiles=("native",), node_labels={},
                                        broker_kind="mosquitto" if mosquitto_binary() else "amqtt",
                                        log_level="WARNING", node_args=("--v2-port", str(v2_port)),
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
            head = json.dumps({"inputs": [{"name": "input", "shape": list(SHAPE), "datatype": "FP32",
                                           "parameters": {"binary_data_size": x.nbytes}}],
                               "parameters": {"binary_data_output": True}}).encode()
            binary_body = head + x.tobytes()
            binary_headers = {HEADER_LENGTH: str(len(head)), "Content-Type": "application/octet-stream"}
            json_body = json.dumps({"inputs": [{"name": "input", "shape": list(SHAPE), "datatype": "FP32",
                                                "data": x.reshape(-1).tolist()}]}).encode()
            json_headers = {"Content-Type": "application/json"}
            bases = {"cluster": f"{stack.cluster_url}/v2/models/{service_id}/infer",
                     "node": f"http://{config.host}:{v2_port}/v2/models/{service_id}/infer"}
            session = requests.Session()

            def node_requests() -> None:
                answer = session.post(bases["node"], data=binary_body, headers=binary_headers, timeout=60)
                answer.raise_for_status()

            with ServiceClient(service_resolver(stack.root_url, service_id), service=service_id) as client:
                def zmq() -> None:
                    [outcome] = client.infer_many([{"input": x}], max_in_flight=1)
                    if outcome.error is not None:
                        raise outcome.error

                binary: dict[str, Sender] = {"zmq": zmq}
                binary.update({f"v2_{where}_binary": _poster(url, binary_body, binary_headers)
                               for where, url in bases.items()})
                if production:
                    binary["v2_node_binary_requests"] = node_requests
                else:  # the node's path does not depend on the cluster's HTTP server
                    binary = {k: v for k, v in binary.items() if not k.startswith("v2_node")}
                as_json = {f"v2_{where}_json": _poster(url, json_body, json_headers)
                           for where, url in bases.items() if production or where == "cluster"}
                _interleaved_p50_ms({**binary, **as_json}, 3)  # warm-up
                p50 = _interleaved_p50_ms(binary, n)
                p50.update(_interleaved_p50_ms({"zmq_again": zmq, **as_json}, max(5, n // 10)))
        finally:
            stack.stop()
    baseline = p50["zmq"]
    result: dict[str, Any] = {"requests": n, "zmq_p50_ms": round(baseline, 3)}
    for name, ms in p50.items():
        if name.startswith("v2_"):
            result[f"{name}_p50_ms"] = round(ms, 3)
            if not name.endswith("requests"):
                kind = "http" if name.endswith("binary") else "json"
                result[f"{name.rsplit('_', 1)[0]}_{kind}_overhead_ms"] = round(ms - baseline, 3)
    result["zmq_p50_drift_ms"] = round(abs(p50["zmq_again"] - baseline), 3)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = benchmark_parser(__doc__, "30 binary requests per path instead of 200 (JSON: 5 instead of 20)")
    add_json_option(parser, "inference_v2")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for quiet in ("node_engine", "treeline_cli.stack", "treeline_cli.broker"):
        logging.getLogger(quiet).setLevel(logging.WARNING)
    report(run(args.quick), args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
