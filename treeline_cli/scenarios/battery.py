"""Scenario ``battery``: energy as a constraint that moves work.

Inputs arrive on a battery node (``rpi4-1``, an emulated Raspberry Pi 4 whose battery holds
:data:`DEMO_BATTERY_WH`, a few mWh, so a few thousand requests drain it); a mains server
(``server-1``) stands by. The SLA names the battery node as the ``source`` and asks
``battery.min_percent`` = :data:`MIN_PERCENT`. A small MLP is deployed: the planner runs it
where the inputs arrive (shipping them over the node's 5 ms uplink costs more than its slow
compute). A client sends requests the whole time and counts every one that fails:

1. the stages' energy drains the emulated battery (:mod:`node_engine.sources.battery_emulated`);
   once it reads below the minimum, the cluster re-plans the deployment off the node
   (:mod:`cluster_orchestrator.energy_rule`, make-before-break: no request fails);
2. the node is put on charge (``<node data dir>/charge.json``); once it reads ``min_percent +
   hysteresis``, the cluster moves the deployment back.

One table: per plan, the predicted energy per inference, the measured one (stage compute time
times the node's draw, from the cluster's deployment view) and, on the battery node, the energy
the battery actually lost per answered request; the requests answered and failed; then the
re-plan events with their causes. Figures: ``battery_replan_failed_requests`` (goal 0),
``battery_replans``, ``battery_energy_mj_per_inference_on_battery_node`` and ``..._after_replan``.
"""

from __future__ import annotations

import io
import json
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TextIO

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from cluster_orchestrator.energy_rule import DEFAULT_HYSTERESIS, cause_kind
from treeline_cli.demo import deploy_sla, register_once
from treeline_cli.root_client import RootClient, http_call
from treeline_cli.scenarios.base import NodeSpec, Scenario, StackSpec
from treeline_cli.scenarios.common import Column, ml_sla, predicted, relative_error, render_table, stage_nodes
from treeline_cli.stack import Stack
from treeline_cli.traffic import ServiceTraffic
from treeline_common.charge import CHARGE_FILE, ChargeControl
from treeline_common.wire import to_dict

log = logging.getLogger(__name__)

BATTERY_NODE, MAINS_NODE = "rpi4-1", "server-1"
DEMO_BATTERY_WH = 0.005  # 18 J: a few thousand requests of the MLP below drain it
MIN_PERCENT = 50.0  # the SLA's battery.min_percent (the emulated rpi4 starts at 80 %)
CHARGE_PERCENT_PER_S = 25.0
MODEL, INPUT, OUTPUT, WIDTH = "battery-mlp", "x", "y", 32
PHASE_TIMEOUT_S = 90.0
SETTLE_S = 10.0  # s of traffic on the last plan, at most, until the cluster measured it


@dataclass(frozen=True)
class BatteryNodeSpec(NodeSpec):
    """A node whose emulated battery holds ``battery_wh`` (``--battery-wh``)."""

    battery_wh: float = DEMO_BATTERY_WH

    def args(self, stack: Stack) -> list[str]:
        return [*super().args(stack), "--battery-wh", repr(self.battery_wh)]


def stack_spec(battery_wh: float = DEMO_BATTERY_WH) -> StackSpec:
    """The scenario's devices: a mains server and the battery node holding ``battery_wh``."""
    return StackSpec((NodeSpec("server", MAINS_NODE),
                      BatteryNodeSpec("rpi4", BATTERY_NODE, battery_wh=battery_wh)))


STACK = stack_spec()


def capacity_wh(spec: StackSpec) -> float:
    """The battery node's capacity in ``spec`` (ValueError when it has no battery node)."""
    for node in spec.nodes:
        if node.name == BATTERY_NODE and isinstance(node, BatteryNodeSpec):
            return node.battery_wh
    raise ValueError(f"the stack has no battery node {BATTERY_NODE}")


def battery_model(seed: int = 0) -> bytes:
    """``y = relu(x @ W1) @ W2`` on ``x [1, WIDTH]``: tens of microseconds per request."""
    rng = np.random.RandomState(seed)
    weights = [numpy_helper.from_array((rng.standard_normal((WIDTH, WIDTH)) / math.sqrt(WIDTH))
                                       .astype(np.float32), name) for name in ("w1", "w2")]
    nodes = [helper.make_node("MatMul", [INPUT, "w1"], ["h"], name="fc1"),
             helper.make_node("Relu", ["h"], ["a"], name="relu"),
             helper.make_node("MatMul", ["a", "w2"], [OUTPUT], name="fc2")]
    x, y = (helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, WIDTH]) for name in (INPUT, OUTPUT))
    graph = helper.make_graph(nodes, MODEL, [x], [y], weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return bytes(model.SerializeToString())


def battery_sla(min_percent: float = MIN_PERCENT) -> dict[str, Any]:
    """The scenario's SLA: inputs arrive on the battery node; spare it below ``min_percent``."""
    return ml_sla("battery", MODEL, [{"name": INPUT, "shape": [1, WIDTH], "dtype": "float32"}],
                  max_partitions=1, source={"node": BATTERY_NODE},
                  constraints=[{"type": "battery", "min_percent": min_percent}])


def set_charger(stack: Stack, node: str, charging: bool, percent_per_s: float = CHARGE_PERCENT_PER_S) -> None:
    """Put ``node``'s emulated battery on (or off) charge: its ``charge.json``."""
    path = stack.config.data_dir / "nodes" / node / CHARGE_FILE
    path.write_text(json.dumps(to_dict(ChargeControl(charging=charging, percent_per_s=percent_per_s))))


class Sender(ServiceTraffic):
    """Sends ``inputs`` to a service again and again until :meth:`finish`, following re-plans;
    counts answers, their latencies, and every request that ended in an error (a failed request)."""

    def __init__(self, root_url: str, service_id: str, inputs: Mapping[str, np.ndarray]) -> None:
        super().__init__(root_url, service_id, inputs, "battery-sender")
        self.answered = 0
        self._latencies_ms: list[float] = []  # of every answer, in order

    def _answered(self, outputs: Mapping[str, Any], latency_ms: float) -> None:
        self.answered += 1
        self._latencies_ms.append(latency_ms)

    def count(self) -> int:
        with self._lock:
            return self.answered

    def p50_ms(self, first: int, count: int) -> float | None:
        """Median latency (ms, retries included) of answers ``first`` .. ``first + count - 1``."""
        with self._lock:
            window = self._latencies_ms[first:first + count]
        return float(np.median(window)) if window else None


@dataclass
class Phase:
    """One plan the deployment served: where, its energy figures, the requests answered meanwhile."""

    label: str
    service: dict[str, Any]
    answered_from: int = 0
    answered: int = 0
    measured_mj: float | None = None
    battery_from: float | None = None
    battery_to: float | None = None
    battery_mj: float | None = None  # what the battery node's charge lost per answered request
    p50_ms: float | None = None  # measured latency of its answers

    @property
    def generation(self) -> int:
        return int((self.service.get("placement") or {}).get("generation") or 0)

    @property
    def predicted_mj(self) -> float | None:
        value = ((self.service.get("placement") or {}).get("predicted") or {}).get("energy_mj")
        return float(value) if isinstance(value, int | float) else None

    @property
    def error(self) -> float:
        """Predicted against measured p50 latency (:func:`.common.relative_error`; NaN: unknown)."""
        return relative_error(predicted(self.service), _mj(self.p50_ms))


@dataclass
class Watcher:
    """Polls the cluster: the battery node's charge and the serving plan's measured energy."""

    root: RootClient
    cluster_url: str
    service_id: str
    events: list[dict[str, Any]] = field(default_factory=list)

    def battery(self, node: str = BATTERY_NODE) -> float | None:
        for doc in http_call("GET", f"{self.cluster_url}/api/nodes", timeout=5.0).get("nodes") or []:
            if doc.get("name") == node:
                reading = (doc.get("telemetry") or {}).get("battery") or doc.get("battery") or {}
                return float(reading["percent"]) if reading.get("percent") is not None else None
        return None

    def measure(self, phase: Phase) -> None:
        """The cluster's measured energy per inference of ``phase``'s generation, if it serves."""
        deployment_id = str((phase.service.get("placement") or {}).get("deployment_id") or "")
        instance = deployment_id[len(self.service_id) + 1:]
        url = f"{self.cluster_url}/api/deployments/{self.service_id}/{instance}"
        view = http_call("GET", url, timeout=5.0)
        serving = int((view.get("placement") or {}).get("generation") or -1)
        measured = (view.get("energy") or {}).get("measured_mj")
        if serving == phase.generation and measured is not None:
            phase.measured_mj = float(measured)

    def settle(self, phase: Phase, timeout: float) -> None:
        """Keep ``phase`` serving until the cluster measured its energy (at most ``timeout`` s)."""
        deadline = time.monotonic() + timeout
        while phase.measured_mj is None and time.monotonic() < deadline:
            self.measure(phase)
            time.sleep(0.2)

    def replan(self, since: float, want: Callable[[dict[str, Any]], bool], phase: Phase, sender: Sender,
               timeout: float = PHASE_TIMEOUT_S) -> dict[str, Any]:
        """Wait for a ``replan`` event after ``since`` that ``want`` accepts, measuring ``phase``
        meanwhile; then the service as it serves after it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.measure(phase)
            found = [e for e in self.root.service_events(self.service_id)
                     if e.get("kind") == "replan" and float(e.get("ts") or 0) >= since and want(e)]
            if found:
                self.events.append(found[-1])
                phase.answered, phase.battery_to = sender.count() - phase.answered_from, self.battery()
                return self.root.wait_deployed(self.service_id, timeout=timeout)
            time.sleep(0.2)
        raise TimeoutError(f"no matching re-plan of {self.service_id} within {timeout:.0f} s "
                           f"(battery {self.battery()} %)")


def _battery_cause(e: Mapping[str, Any]) -> bool:
    return cause_kind(str(e.get("cause") or "")) == "battery"


def drive(stack: Stack, battery_wh: float, timeout: float = PHASE_TIMEOUT_S) -> dict[str, Any]:
    """Deploy, drain, re-plan, charge, re-plan back (the module docstring); the phases, events and
    failed requests. Raises TimeoutError when a step does not happen within ``timeout``."""
    root = RootClient(stack.root_url)
    register_once(root, MODEL, battery_model(), "battery scenario MLP")
    [service] = deploy_sla(root, battery_sla(), io.StringIO(), timeout=timeout)  # progress not shown
    service_id = str(service["service_id"])
    watcher = Watcher(root, stack.cluster_url, service_id)
    set_charger(stack, BATTERY_NODE, charging=False)
    phases = [Phase(f"on {'+'.join(stage_nodes(service))}", service)]
    x = np.linspace(-1.0, 1.0, WIDTH, dtype=np.float32).reshape(1, WIDTH)
    sender = Sender(stack.root_url, service_id, {INPUT: x}).start()
    try:
        phases[0].battery_from = watcher.battery()
        since = time.time()
        moved = watcher.replan(since, lambda e: _battery_cause(e) and "below" in str(e.get("cause")),
                               phases[0], sender, timeout)
        phases.append(Phase(f"re-planned to {'+'.join(stage_nodes(moved))}", moved, sender.count(),
                            battery_from=watcher.battery()))
        watcher.settle(phases[1], min(timeout, SETTLE_S))
        since = time.time()
        set_charger(stack, BATTERY_NODE, charging=True)
        back = watcher.replan(since, lambda e: _battery_cause(e) and "charged" in str(e.get("cause")),
                              phases[1], sender, timeout)
        phases.append(Phase(f"back on {'+'.join(stage_nodes(back))}", back, sender.count(),
                            battery_from=watcher.battery()))
        watcher.settle(phases[2], min(timeout, SETTLE_S))
        phases[2].answered, phases[2].battery_to = sender.count() - phases[2].answered_from, watcher.battery()
    finally:
        sender.finish()
    for phase in phases:
        phase.p50_ms = sender.p50_ms(phase.answered_from, phase.answered)
    first = phases[0]
    if first.battery_from is not None and first.battery_to is not None and first.answered:
        lost_j = (first.battery_from - first.battery_to) / 100.0 * battery_wh * 3600.0
        first.battery_mj = lost_j * 1000.0 / first.answered
    return {"service_id": service_id, "phases": phases, "events": watcher.events, "failures": sender.failures}


def _mj(value: float | None) -> float:
    return math.nan if value is None else value


def run(stack: Stack, out: TextIO, quick: bool) -> dict[str, Any]:
    """The scenario on :data:`STACK` (``quick`` changes nothing: a few thousand requests either way)."""
    return report(stack, out, capacity_wh(STACK))


def report(stack: Stack, out: TextIO, battery_wh: float) -> dict[str, Any]:
    """Drive the scenario on ``stack`` (its battery node holds ``battery_wh``), print its table and
    return its record (figures, plans, events)."""
    result = drive(stack, battery_wh)
    phases: list[Phase] = result["phases"]
    columns = [Column(p.label, " + ".join(stage_nodes(p.service)), {
        "predicted mJ/inference": _mj(p.predicted_mj),
        "measured mJ/inference (stage time x power)": _mj(p.measured_mj),
        "battery drained mJ/answer": _mj(p.battery_mj),
        "battery % at start": _mj(p.battery_from),
        "battery % at the next re-plan (or end)": _mj(p.battery_to),
        "predicted latency ms": predicted(p.service),
        "p50 latency ms": _mj(p.p50_ms),
        "prediction error": p.error,
        "requests answered": float(p.answered),
    }) for p in phases]
    failed = len(result["failures"])
    notes = [f"SLA battery.min_percent {MIN_PERCENT:g}, back at {MIN_PERCENT + DEFAULT_HYSTERESIS:g} "
             f"(hysteresis {DEFAULT_HYSTERESIS:g} points); emulated battery {battery_wh * 1000:g} mWh, "
             f"charging at {CHARGE_PERCENT_PER_S:g} %/s",
             f"failed requests during both moves: {failed}",
             *(f"re-plan (generation {e.get('generation')}): {e.get('cause')}" for e in result["events"])]
    out.write(render_table("battery: energy per inference per plan, re-plans by battery", columns, notes))
    on_battery, after = phases[0], phases[1]
    return {
        "service_id": result["service_id"],
        "figures": {
            "battery_replan_failed_requests": failed,
            "battery_replans": sum(1 for e in result["events"] if _battery_cause(e)),
            # predicted by the plans; measured (stage time x power) beside them, None if not measured
            "battery_energy_mj_per_inference_on_battery_node": on_battery.predicted_mj,
            "battery_energy_mj_per_inference_after_replan": after.predicted_mj,
            "battery_energy_mj_per_inference_on_battery_node_measured": on_battery.measured_mj,
            "battery_energy_mj_per_inference_after_replan_measured": after.measured_mj,
        },
        "prediction_errors": [p.error for p in phases if math.isfinite(p.error)],
        "plans": {p.label: {"nodes": stage_nodes(p.service), "predicted_mj": p.predicted_mj,
                            "measured_mj": p.measured_mj, "battery_mj": p.battery_mj, "answered": p.answered,
                            "predicted_latency_ms": predicted(p.service), "p50_latency_ms": p.p50_ms}
                  for p in phases},
        "events": [{k: e.get(k) for k in ("ts", "kind", "cause", "generation", "nodes")}
                   for e in result["events"]],
    }


SCENARIO = Scenario("battery", "a battery node's charge moves work off it and back (energy per inference, "
                               "re-plan events, failed requests)", STACK, run)
