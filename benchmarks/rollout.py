"""Canary rollouts under traffic: failed requests, time to promote, time to roll back an SLA breach.

A real stack (broker, root, cluster, two ``server`` node engines as processes) serves
``y = 2x`` while a caller thread sends requests through the service's entry (ServiceClient,
re-resolving through the root, as users do). Then, each by registering a version and
re-applying the SLA (``version: latest``):

1. **v2**, the same function as another graph: the canary takes ``canary_share`` of the
   entry's requests, passes the checks and is promoted (``promote_s``: apply to promotion);
2. **v3**, answers that rank the outputs the other way round: the probe disagrees, it is
   rolled back (``rollback_disagreement_s``);
3. **v4**, the right answers behind a deliberately heavy op (four 512x512 MatMuls fed from the
   input, so nothing is folded away) against ``max_latency_ms`` 30: rolled back on latency
   (``rollback_latency_s``).

``rollback_s`` (goal <= 10) is the larger of the two rollbacks, each measured from the moment
the canary route took requests (the breach is live) to the moment the router's node said the
route is gone. ``rollout_failed_requests`` (goal 0) counts the caller's requests that ended in
an error over the whole run; ``canary_answers_refused_versions`` how many of its requests the
refused versions answered while their canary ran (the exposure a canary accepts).

``python -m benchmarks.rollout [--quick] [--json PATH]``; :func:`run` is what
``benchmarks.lifecycle`` imports. Figures on a shared 2-core machine are "measured under load".
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from benchmarks.report import add_json_option, benchmark_parser, report
from treeline_cli.root_client import RootClient
from treeline_cli.stack import Stack, StackConfig, pick_ports, start_stack
from treeline_cli.traffic import ServiceTraffic
from treeline_common.netutil import poll_until

OPSET = [helper.make_opsetid("", 17)]
EVENT_TIMEOUT_S = 120.0


def scaled(factor: float, via_add: bool = False, heavy: int = 0) -> bytes:
    """``y = factor * x`` for ``x[1, 4]``. ``via_add``: as ``x + x`` (factor 2; the same answers from
    another graph). ``heavy``: plus that many 512x512 MatMuls fed from ``x`` whose result is
    multiplied by 0 (the same answers, much slower; input-dependent, so never constant-folded)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    weights = [numpy_helper.from_array(np.array(factor, dtype=np.float32), "k"),
               numpy_helper.from_array(np.array([512, 512], dtype=np.int64), "square"),
               numpy_helper.from_array(np.array(0.0, dtype=np.float32), "zero")]
    nodes = [helper.make_node("Add", ["x", "x"], ["scaled"], name="add") if via_add
             else helper.make_node("Mul", ["x", "k"], ["scaled"], name="mul")]
    if heavy:
        nodes += [helper.make_node("ReduceMean", ["x"], ["m"], keepdims=0, name="mean"),
                  helper.make_node("ConstantOfShape", ["square"], ["ones"], name="ones",
                                   value=helper.make_tensor("one", TensorProto.FLOAT, [1], [0.001])),
                  helper.make_node("Add", ["ones", "m"], ["h0"], name="feed")]
        nodes += [helper.make_node("MatMul", [f"h{i}", "ones"], [f"h{i + 1}"], name=f"heavy{i}")
                  for i in range(heavy)]
        nodes += [helper.make_node("ReduceMean", [f"h{heavy}"], ["r"], keepdims=0, name="collapse"),
                  helper.make_node("Mul", ["r", "zero"], ["nothing"], name="cancel"),
                  helper.make_node("Add", ["scaled", "nothing"], ["y"], name="out")]
    else:
        nodes.append(helper.make_node("Identity", ["scaled"], ["y"], name="out"))
    graph = helper.make_graph(nodes, "scale", [x], [y], weights)
    return helper.make_model(graph, opset_imports=OPSET).SerializeToString()


def rollout_sla(share: float, min_requests: int, max_latency_ms: float | None = None) -> dict[str, Any]:
    """One ``ml-model`` microservice serving ``scaler`` (latest) with a canary rollout block."""
    rollout: dict[str, Any] = {"canary_share": share, "min_requests": min_requests, "probe": 4,
                               "timeout_s": 40}
    if max_latency_ms is not None:
        rollout["max_latency_ms"] = max_latency_ms
    return {"sla_version": "v2.0", "customerID": "Admin", "applications": [{
        "applicationID": "", "application_name": "rollout", "application_namespace": "demo",
        "application_desc": "canary", "microservices": [{
            "microserviceID": "", "microservice_name": "m", "microservice_namespace": "demo",
            "virtualization": "ml-model", "memory": 128, "vcpus": 1,
            "model": {"name": "scaler", "version": "latest", "rollout": rollout,
                      "inputs": [{"name": "x", "shape": [1, 4], "dtype": "float32"}]},
            "constraints": [], "connectivity": []}]}]}


class Traffic(ServiceTraffic):
    """Sends ``x = [1, 2, 3, 4]`` to a service until :meth:`finish`; counts the answers per factor
    (``y[0] / x[0]``) and every request that ended in an error."""

    def __init__(self, root_url: str, service_id: str) -> None:
        super().__init__(root_url, service_id, {"x": np.array([[1.0, 2.0, 3.0, 4.0]], dtype=np.float32)},
                         "rollout-traffic")
        self.answered: dict[float, int] = {}

    def _answered(self, outputs: Mapping[str, Any], latency_ms: float) -> None:
        factor = round(float(outputs["y"][0, 0]), 3)
        self.answered[factor] = self.answered.get(factor, 0) + 1

    def total(self) -> int:
        with self._lock:
            return sum(self.answered.values())

    def wait_for(self, count: int, timeout: float = EVENT_TIMEOUT_S) -> None:
        """Until ``count`` requests were answered in all (TimeoutError otherwise)."""
        poll_until(lambda: self.total() >= count, timeout, interval=0.05, what=f"{count} answered requests")


def wait_for_event(root: RootClient, service_id: str, kinds: Sequence[str], after: float,
                   timeout: float = EVENT_TIMEOUT_S) -> dict[str, Any]:
    """The newest service event of one of ``kinds`` at or after wall time ``after``."""
    def found() -> dict[str, Any] | None:
        events = [e for e in root.service_events(service_id) if e.get("kind") in kinds and e["ts"] >= after]
        return events[-1] if events else None
    return poll_until(found, timeout, interval=0.1, what=f"a {'/'.join(kinds)} event")


def roll_to(root: RootClient, service_id: str, model: bytes,
            sla: dict[str, Any]) -> tuple[dict[str, Any], float]:
    """Register ``model`` as the next ``scaler`` version and re-apply ``sla``: the verdict event
    (``promoted`` or ``rolled_back``) and the seconds from the apply to it."""
    root.register_model("scaler", model)
    since = time.time()
    root.apply(sla)
    verdict = wait_for_event(root, service_id, ("promoted", "rolled_back"), since)
    return verdict, float(verdict["ts"]) - since


@contextmanager
def serving_stack() -> Iterator[Stack]:
    """A stack with two ``server`` nodes, ready; stopped on exit."""
    with tempfile.TemporaryDirectory(prefix="treeline-rollout-") as tmp:
        stack = start_stack(pick_ports(StackConfig(data_dir=Path(tmp), nodes=2, profiles=("server", "server"),
                                                   node_labels={}, node_threads=1, telemetry_interval=0.5)))
        try:
            stack.wait_ready(timeout=90)
            yield stack
        finally:
            stack.stop(timeout=5)


def run(quick: bool = False) -> dict[str, Any]:
    """The figures of the module docstring (``quick``: fewer canary requests before a promotion)."""
    min_requests = 20 if quick else 100
    with serving_stack() as stack:
        root = RootClient(stack.root_url)
        root.register_model("scaler", scaled(2.0))
        [application] = root.apply(rollout_sla(0.2, min_requests))
        [service_id] = application["microservices"]
        root.deploy_service(service_id)
        root.wait_deployed(service_id, timeout=EVENT_TIMEOUT_S)
        traffic = Traffic(stack.root_url, service_id).start()
        try:
            traffic.wait_for(50)
            promoted, promote_s = roll_to(root, service_id, scaled(2.0, via_add=True),
                                          rollout_sla(0.2, min_requests))
            disagreeing, _ = roll_to(root, service_id, scaled(-2.0), rollout_sla(0.2, min_requests))
            slow, _ = roll_to(root, service_id, scaled(2.0, heavy=4), rollout_sla(0.2, min_requests, 30.0))
            traffic.wait_for(traffic.total() + 50)
        finally:
            traffic.finish()
    refused = {-2.0}
    return {
        "rollout_failed_requests": len(traffic.failures),
        "rollout_requests": traffic.total() + len(traffic.failures),
        "promoted_v2": promoted["kind"] == "promoted",
        "promote_s": round(promote_s, 3),
        "promote_canary_s": promoted.get("canary_s"),
        "promote_live_canary_requests": (promoted.get("figures") or {}).get("live_requests"),
        "rolled_back_disagreement": disagreeing["kind"] == "rolled_back",
        "rolled_back_latency": slow["kind"] == "rolled_back",
        "rollback_disagreement_s": disagreeing.get("canary_s"),
        "rollback_latency_s": slow.get("canary_s"),
        "rollback_s": max(float(disagreeing.get("canary_s") or 0.0), float(slow.get("canary_s") or 0.0)),
        "rollback_reasons": [disagreeing.get("reason"), slow.get("reason")],
        "canary_answers_refused_versions": sum(n for f, n in traffic.answered.items() if f in refused),
        "failure_samples": traffic.failures[:3],
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = benchmark_parser(__doc__, "20 canary requests before a promotion instead of 100")
    add_json_option(parser, "rollout")
    args = parser.parse_args(argv)
    report(run(args.quick), args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
