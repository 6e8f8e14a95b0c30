"""What every scenario does: write an SLA, deploy it, summarise its plan, measure and tabulate.

Deploying and measuring reuse :mod:`treeline_cli.demo` (``deploy_sla``, ``register_once``,
``measure_interleaved``); this module adds the scenario-shaped parts: an ML SLA from a few
arguments, the plan's explanation in a few lines, predicted against measured latency, outputs
against the whole model, and the one comparison table each scenario prints.

Scenarios measure their services through the root (``measure_interleaved`` with its URL), so a
request follows a re-plan (the cluster re-plans a deployment whose stages drift from their
predictions) instead of failing on a stage that is gone. That makes a root client per round and
deployment; :func:`shared_login` gives them one token, else each would log in inside its round's
first request (0.7-1.0 s measured here, all of it in the p99 and the throughput).
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

import numpy as np
import onnxruntime as ort

from node_engine.data_plane.service_client import ServiceClient
from treeline_cli.demo import deploy_sla, measure_interleaved
from treeline_cli.inference import InferenceReport, service_resolver
from treeline_cli.input_values import placement_inputs, random_inputs
from treeline_cli.root_client import DEV_ACCOUNT, TOKEN_ENV, RootClient, login
from treeline_cli.stack import Stack
from treeline_common.errors import TreelineError
from treeline_common.http import call_json

NAMESPACE = "scenarios"


def ml_sla(app: str, model: str, inputs: Sequence[Mapping[str, Any]], *, max_partitions: int = 3,
           objective: str = "latency", constraints: Sequence[Mapping[str, Any]] = (),
           source: Mapping[str, str] | None = None, scheduler_profile: str | None = None,
           memory: int = 64) -> dict[str, Any]:
    """A one-service SLA v2.0 document deploying registered model ``model`` (latest version).

    ``inputs``: ``[{name, shape, dtype}]``; ``source``: ``{"node": name}`` or ``{"label": label}``,
    where requests arrive; ``constraints``: SLA constraint objects (``direct``, ``privacy_pin``, ...).
    """
    block: dict[str, Any] = {"name": model, "version": "latest", "inputs": [dict(i) for i in inputs],
                             "objective": objective, "max_partitions": max_partitions, "variants": ["fp32"],
                             "accuracy_floor": 0.0}
    if source:
        block["source"] = dict(source)
    if scheduler_profile:
        block["scheduler_profile"] = scheduler_profile
    service = {"microserviceID": "", "microservice_name": "svc", "microservice_namespace": NAMESPACE,
               "virtualization": "ml-model", "memory": memory, "vcpus": 1, "model": block,
               "constraints": [dict(c) for c in constraints], "connectivity": []}
    return {"sla_version": "v2.0", "customerID": "Admin", "applications": [{
        "applicationID": "", "application_name": app, "application_namespace": NAMESPACE,
        "application_desc": f"collaboration scenario: {app}", "microservices": [service]}]}


def direct(*nodes: str) -> dict[str, Any]:
    """An Oakestra ``direct`` constraint naming the only nodes a plan may use."""
    return {"type": "direct", "node": ";".join(nodes)}


def predicted(service: Mapping[str, Any], key: str = "latency_ms") -> float:
    """The plan's predicted figure (``latency_ms``, ``throughput_rps``, ...), NaN when absent."""
    value = ((service.get("placement") or {}).get("predicted") or {}).get(key)
    return float(value) if isinstance(value, int | float) else math.nan


def ordered_stages(service: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The placement's stages in pipeline order."""
    stages = (service.get("placement") or {}).get("stages") or []
    return sorted((dict(s) for s in stages), key=lambda s: int(s.get("index", 0)))


def stage_nodes(service: Mapping[str, Any]) -> list[str]:
    """The node name of each stage, in order (a relay on the source node is not a stage)."""
    return [str(s.get("node_name") or s.get("node_id")) for s in ordered_stages(service)
            if int(s.get("index", 0)) >= 0]


def plan_summary(service: Mapping[str, Any]) -> dict[str, Any]:
    """The plan in a few fields: its stages (node, profile, cut bytes), the predicted figures, the
    strategy, and every node it left out with the scheduler's reason."""
    placement = service.get("placement") or {}
    explanation = service.get("explanation") or {}
    names = explanation.get("node_names") or {}
    used = {s.get("node_id") for s in placement.get("stages") or []}
    unused = explanation.get("filtered_or_unused") or {}
    return {
        "strategy": placement.get("strategy"),
        "stages": [{"node": s.get("node_name") or s.get("node_id"), "profile": s.get("profile"),
                    "index": s.get("index"), "cut_bytes": s.get("cut_bytes"),
                    "predicted_compute_ms": s.get("predicted_compute_ms")}
                   for s in ordered_stages(service)],
        "predicted": placement.get("predicted") or {},
        "not_used": {names.get(k, k): v for k, v in sorted(unused.items()) if k not in used},
    }


def plan_breakdown(service: Mapping[str, Any]) -> str:
    """The plan's predicted ms stage by stage: ``cloud-1 9.4 ms (2.0 ms in)`` joined by `` -> ``."""
    parts = []
    for stage in ordered_stages(service):
        moved = float(stage.get("predicted_transfer_in_ms") or 0.0)
        parts.append(f"{stage.get('node_name') or stage.get('node_id')} "
                     f"{float(stage.get('predicted_compute_ms') or 0.0):.1f} ms"
                     + (f" ({moved:.1f} ms in)" if moved else ""))
    return " -> ".join(parts)


def relative_error(predicted_ms: float, measured_ms: float) -> float:
    """``|measured - predicted| / measured`` (NaN when either is missing or measured is 0)."""
    if not (math.isfinite(predicted_ms) and math.isfinite(measured_ms)) or measured_ms <= 0:
        return math.nan
    return abs(measured_ms - predicted_ms) / measured_ms


def plans_record(services: Mapping[str, Mapping[str, Any]], results: Mapping[str, Mapping[str, Any]],
                 replanned: Mapping[str, Any],
                 extra: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, Any]:
    """A scenario record's ``prediction_errors`` (p50 latency against the plan's prediction, per
    alternative) and ``plans`` (each alternative's plan summary, nodes and measured figures, plus
    ``extra[label]``). ``results[label]`` holds ``latency`` and ``throughput`` InferenceReports."""
    return {
        "prediction_errors": [relative_error(predicted(svc), results[label]["latency"].p50_ms)
                              for label, svc in services.items()],
        "plans": {label: {**plan_summary(svc), "stage_nodes": stage_nodes(svc),
                          "measured_p50_ms": results[label]["latency"].p50_ms,
                          "measured_p99_ms": results[label]["latency"].p99_ms,
                          "measured_throughput_rps": results[label]["throughput"].throughput_rps,
                          **(extra or {}).get(label, {}), "replanned_while_measured": replanned[label]}
                  for label, svc in services.items()},
    }


@dataclass
class Column:
    """One alternative in a scenario's table: its label, plan text and figures by row name."""

    label: str
    plan: str
    figures: dict[str, float] = field(default_factory=dict)


def measured_column(label: str, service: Mapping[str, Any], report: Mapping[str, InferenceReport]) -> Column:
    """The usual rows of a deployed alternative: plan, predicted and measured latency, throughput."""
    latency, throughput = report["latency"], report["throughput"]
    return Column(label, " + ".join(stage_nodes(service)), {
        "predicted latency ms": predicted(service),
        "p50 latency ms": latency.p50_ms,
        "p99 latency ms": latency.p99_ms,
        "prediction error": relative_error(predicted(service), latency.p50_ms),
        f"throughput req/s ({throughput.in_flight} in flight)": throughput.throughput_rps,
        "failed requests": float(latency.failed + throughput.failed),
    })


def render_table(title: str, columns: Sequence[Column], notes: Sequence[str] = ()) -> str:
    """One table: a column per alternative, a row per figure (blank where an alternative has none)."""
    width = max(18, *(min(len(c.label), 28) + 2 for c in columns))
    rows: list[str] = []
    for column in columns:
        rows += [r for r in column.figures if r not in rows]
    label_width = max(len("plan"), *(len(r) for r in rows))
    lines = ["", title, f"{'':<{label_width}}" + "".join(f"{c.label[:width - 2]:>{width}}" for c in columns),
             "-" * (label_width + width * len(columns)),
             f"{'plan':<{label_width}}" + "".join(f"{c.plan[:width - 2]:>{width}}" for c in columns)]
    for row in rows:
        cells = []
        for column in columns:
            value = column.figures.get(row)
            cells.append(f"{'':>{width}}" if value is None or (isinstance(value, float) and math.isnan(value))
                         else f"{_shown(value):>{width}}")
        lines.append(f"{row:<{label_width}}" + "".join(cells))
    lines += ["", *notes, ""]
    return "\n".join(lines) + "\n"


def _shown(value: float) -> str:
    if float(value).is_integer() and abs(value) >= 1:
        return f"{int(value):,}"
    return f"{value:.3g}" if abs(value) < 10 else f"{value:.1f}"


@contextlib.contextmanager
def shared_login(root_url: str) -> Iterator[None]:
    """Root clients made meanwhile use one token (``TREELINE_TOKEN``, restored afterwards): the
    caller's own when set, else one log-in as the development account (a development root only;
    elsewhere each client finds its credentials as the CLI's do)."""
    try:
        token = None if os.environ.get(TOKEN_ENV) else login(root_url, *DEV_ACCOUNT)["token"]
    except TreelineError:
        token = None
    if token is None:
        yield
        return
    os.environ[TOKEN_ENV] = token
    try:
        yield
    finally:
        os.environ.pop(TOKEN_ENV, None)


def generations(root_url: str, services: Mapping[str, Mapping[str, Any]]) -> dict[str, int]:
    """Each service's current placement generation (a re-plan raises it)."""
    client = RootClient(root_url)
    return {label: int((client.service(str(svc["service_id"])).get("placement") or {}).get("generation") or 0)
            for label, svc in services.items()}


def measure_services(root_url: str, services: Mapping[str, dict[str, Any]],
                     requests: int) -> tuple[dict[str, dict[str, InferenceReport]], dict[str, bool]]:
    """:func:`treeline_cli.demo.measure_interleaved` through the root (call it under
    :func:`shared_login`), and per service whether it was re-planned meanwhile."""
    before = {label: int((svc.get("placement") or {}).get("generation") or 0)
              for label, svc in services.items()}
    results = measure_interleaved(dict(services), requests, root_url)
    after = generations(root_url, services)
    return results, {label: after[label] != before[label] for label in services}


def replanned_note(replanned: Mapping[str, bool]) -> list[str]:
    """A note naming the alternatives re-planned while measured (their figures mix two plans)."""
    moved = [label for label, flag in replanned.items() if flag]
    return [f"re-planned while measured (the cluster re-plans stages that drift from their predictions; "
            f"figures cover both plans): {', '.join(moved)}"] if moved else []


def deploy_all(stack: Stack, slas: Mapping[str, dict[str, Any]], out: TextIO) -> dict[str, dict[str, Any]]:
    """Deploy each labelled SLA (:func:`treeline_cli.demo.deploy_sla`: idempotent) until RUNNING;
    ``{label: service document}`` in the order given."""
    client = RootClient(stack.root_url)
    services = {}
    for label, sla in slas.items():
        out.write(f"Deploying {label} ...\n")
        services[label] = deploy_sla(client, sla, out)[0]
    return services


def node_endpoints(stack: Stack) -> dict[str, str]:
    """Node name -> its data-plane endpoint, as the cluster lists them."""
    nodes = call_json("GET", f"{stack.cluster_url}/api/nodes", timeout=10)["nodes"]
    return {str(n["name"]): str(n["data_endpoint"])
            for n in nodes if n.get("name") and n.get("data_endpoint")}


def whole_model_difference(services: Mapping[str, Mapping[str, Any]], onnx_bytes: bytes, root_url: str,
                           samples: int = 2) -> float:
    """Max |pipeline - whole model| over every output of every deployment, for ``samples`` valid
    inputs (onnxruntime on the whole model is the reference)."""
    whole = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    worst = 0.0
    for service in services.values():
        specs = placement_inputs(service["placement"])
        resolver = service_resolver(root_url, str(service["service_id"]))
        with ServiceClient(resolver, service=str(service["service_id"])) as client:
            for sample in random_inputs(specs, samples, seed=11):
                outputs, _ = client.infer(sample)
                names = [o.name for o in whole.get_outputs()]
                expected = dict(zip(names, whole.run(None, sample), strict=True))
                worst = max(worst, *(float(np.max(np.abs(outputs[k] - expected[k]))) for k in expected))
    return worst
