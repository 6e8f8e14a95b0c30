"""``treeline demo``'s HTML report: the printed table as pictures, in one self-contained file.

:func:`render_report` is pure: the demo's result dict (``demo_results.json``, built by
:func:`treeline_cli.demo.run_demo`) in, an HTML string out. The page needs no network and no
script: inline CSS and inline SVG drawn by :mod:`treeline_cli.svg`; hover texts are SVG
``<title>`` elements. Every string from the record (node names, labels, reasons) is escaped.

What the record must hold (missing figures show as "n/a", never as an error)::

    {"requests": int, "in_flight": int, "rounds": int, "measured_at": str, "machine": str,
     "max_abs_output_difference": float,
     "deployments": {label: {"placement": Placement.to_dict(), "explanation": {... "plan":
                     {"stages": [{index, start, end, ...}]}, "filtered_or_unused", "node_names"},
                     "latency": InferenceReport summary (1 in flight),
                     "throughput": InferenceReport summary (several in flight)}}}

Per deployment: a placement strip (operators in order, one segment per stage coloured by its
node, widths from the plan's operator ranges ``[start, end)`` or, without them, from FLOPs;
cut tensors marked with their size), and per-stage bars (predicted against measured compute and
link transfer). Across deployments: the printed end-to-end table and bars for latency and
throughput, so the baselines sit side by side.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from html import escape
from pathlib import Path
from typing import Any

from treeline_cli import svg

STRIP_W, STRIP_H = 720.0, 46.0
CSS = """body{font-family:sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#222}
table{border-collapse:collapse;margin:1rem 0}td,th{border:1px solid #ccc;padding:.25rem .6rem}
td.n{text-align:right;font-variant-numeric:tabular-nums}.note{color:#555;font-size:.9rem}
.legend span{display:inline-block;width:.9rem;height:.9rem;margin:0 .3rem 0 1rem;vertical-align:middle}
section{margin-top:2.5rem}"""


def _fmt(value: Any, digits: int = 2) -> str:
    number = svg.finite(value)
    return "n/a" if number is None else f"{number:.{digits}f}"


def _kb(size: Any) -> str:
    number = svg.finite(size) or 0.0
    return f"{number / 1024:.1f} KB" if number < 1024 * 1024 else f"{number / 1024 / 1024:.2f} MB"


def _stages(deployment: Mapping[str, Any]) -> list[dict[str, Any]]:
    return list((deployment.get("placement") or {}).get("stages") or [])


def _node(stage: Mapping[str, Any]) -> str:
    return str(stage.get("node_name") or stage.get("node_id") or "?")


def node_colours(record: Mapping[str, Any]) -> dict[str, str]:
    """One colour per node name, in order of first appearance, the same in every picture."""
    names: dict[str, str] = {}
    for deployment in (record.get("deployments") or {}).values():
        for stage in _stages(deployment):
            names.setdefault(_node(stage), svg.colour(len(names)))
    return names


def stage_spans(deployment: Mapping[str, Any]) -> list[tuple[float, float, str]]:
    """``(start, end, what)`` per stage on one axis: the plan's operator range when the
    explanation has it (``"ops 0-25"``), else cumulative FLOPs (``"614.6 MFLOPs"``), else equal."""
    stages = _stages(deployment)
    plan = ((deployment.get("explanation") or {}).get("plan") or {}).get("stages") or []
    ranges: dict[Any, tuple[float | None, float | None]] = {
        s.get("index"): (svg.finite(s.get("start")), svg.finite(s.get("end")))
        for s in plan if isinstance(s, Mapping)}
    ops = [ranges.get(s.get("index"), (None, None)) for s in stages]
    if stages and all(a is not None and b is not None and b >= a for a, b in ops):
        return [(a or 0.0, b or 0.0, f"ops {a:.0f}-{b:.0f}") for a, b in ops]
    flops = [svg.finite(s.get("flops")) or 0.0 for s in stages]
    weights = flops if sum(flops) > 0 else [1.0] * len(stages)
    spans, at = [], 0.0
    for weight, value in zip(weights, flops, strict=True):
        spans.append((at, at + weight, f"{value / 1e6:.1f} MFLOPs"))
        at += weight
    return spans


def placement_strip(deployment: Mapping[str, Any], colours: Mapping[str, str]) -> str:
    """The operators in order as one bar: a ``stage`` rect per stage filled with its node's colour,
    a ``cut`` line and size label where the tensors cross to the next stage."""
    stages, spans = _stages(deployment), stage_spans(deployment)
    total = max((end for _, end, _ in spans), default=0.0) - min((s for s, _, _ in spans), default=0.0)
    origin = min((s for s, _, _ in spans), default=0.0)
    scale = (STRIP_W - 20) / (total or 1.0)
    top, body = 22.0, []
    for stage, (start, end, what) in zip(stages, spans, strict=True):
        x, width = 10 + (start - origin) * scale, (end - start) * scale
        flops = (svg.finite(stage.get("flops")) or 0.0) / 1e6
        name = f"{stage.get('index')}: {_node(stage)}"
        body.append(svg.rect(x, top, width, STRIP_H, colours.get(_node(stage), "#999"), class_="stage",
                             title=f"stage {name}, {what}, {flops:.1f} MFLOPs", stroke="#fff"))
        if width > 60:
            body.append(svg.text(x + width / 2, top + STRIP_H / 2 + 4, name, anchor="middle", fill="#fff",
                                 size=11))
        body.append(svg.text(x + width / 2, top + STRIP_H + 14, what, anchor="middle", size=10))
    for stage, (_, end, _) in zip(stages[:-1], spans[:-1], strict=True):
        x = 10 + (end - origin) * scale
        body.append(svg.line(x, top - 6, x, top + STRIP_H + 2, stroke="#000", width=2.0, class_="cut"))
        body.append(svg.text(x, top - 9, f"cut {_kb(stage.get('cut_bytes'))}", anchor="middle", size=11,
                             class_="cut-label"))
    return svg.document(STRIP_W, top + STRIP_H + 22, body, "placement strip")


def legend(deployment: Mapping[str, Any], colours: Mapping[str, str]) -> str:
    """The nodes a deployment uses, each with its colour swatch and profile."""
    seen: dict[str, str] = {}
    for stage in _stages(deployment):
        seen.setdefault(_node(stage), str(stage.get("profile") or ""))
    items = "".join(f'<span style="background:{escape(colours.get(name, "#999"), quote=True)}"></span>'
                    f"{escape(name)}{f' ({escape(profile)})' if profile else ''}"
                    for name, profile in seen.items())
    return f'<p class="legend">{items}</p>'


def stage_bars(deployment: Mapping[str, Any]) -> str:
    """Per stage, predicted against measured compute ms (1 in flight); then each link, predicted
    transfer into the next stage against the measured emulated transfer."""
    stages = _stages(deployment)
    latency = deployment.get("latency") or {}
    measured, links = latency.get("stage_ms") or {}, latency.get("link_ms") or {}
    rows: list[tuple[str, list[tuple[str, float | None, str]]]] = []
    for stage in stages:
        rows.append((f"stage {stage.get('index')} compute ({_node(stage)})",
                     [("predicted", svg.finite(stage.get("predicted_compute_ms")), svg.PREDICTED),
                      ("measured", svg.finite(measured.get(stage.get("stage_key"))), svg.MEASURED)]))
    for stage, after in itertools.pairwise(stages):
        rows.append((f"link {stage.get('index')} to {after.get('index')} ({_kb(stage.get('cut_bytes'))})",
                     [("predicted", svg.finite(after.get("predicted_transfer_in_ms")), svg.PREDICTED),
                      ("measured", svg.finite(links.get(stage.get("stage_key"))), svg.MEASURED)]))
    return svg.bar_rows(rows, "ms", "latency per stage")


def _predicted(deployment: Mapping[str, Any], key: str) -> Any:
    return ((deployment.get("placement") or {}).get("predicted") or {}).get(key)


def _in_flight(record: Mapping[str, Any]) -> Any:
    """How many requests were in flight in the throughput runs (the record's, else a report's)."""
    reports = [d.get("throughput") or {} for d in (record.get("deployments") or {}).values()]
    return record.get("in_flight") or next((r["in_flight"] for r in reports if r.get("in_flight")), "N")


def summary_rows(record: Mapping[str, Any]) -> list[tuple[str, list[float | None]]]:
    """The end-to-end rows of the printed table (same figures), plus predicted energy and
    requests that failed; one value per deployment, None where the record has no figure."""
    deployments = list((record.get("deployments") or {}).values())
    k = _in_flight(record)

    def col(kind: str, key: str) -> list[float | None]:
        return [svg.finite((d.get(kind) or {}).get(key)) for d in deployments]

    return [
        ("predicted latency ms", [svg.finite(_predicted(d, "latency_ms")) for d in deployments]),
        ("p50 latency ms (1 in flight)", col("latency", "p50_ms")),
        ("p99 latency ms (1 in flight)", col("latency", "p99_ms")),
        ("predicted throughput req/s", [svg.finite(_predicted(d, "throughput_rps")) for d in deployments]),
        ("throughput req/s (1 in flight)", col("latency", "throughput_rps")),
        (f"throughput req/s ({k} in flight)", col("throughput", "throughput_rps")),
        (f"p50 latency ms ({k} in flight)", col("throughput", "p50_ms")),
        ("predicted energy per inference mJ", [svg.finite(_predicted(d, "energy_mj")) for d in deployments]),
        ("failed requests (1 in flight)", col("latency", "failed")),
    ]


def summary_table(record: Mapping[str, Any]) -> str:
    labels = list(record.get("deployments") or {})
    head = "".join(f"<th>{escape(label)}</th>" for label in labels)
    body = "".join(f"<tr><th>{escape(name)}</th>" + "".join(f'<td class="n">{_fmt(v)}</td>' for v in values)
                   + "</tr>" for name, values in summary_rows(record))
    return f"<table><tr><th>end to end</th>{head}</tr>{body}</table>"


def comparison_bars(record: Mapping[str, Any]) -> str:
    """Two charts, deployments side by side: latency (predicted, p50, p99) and throughput."""
    rows = dict(summary_rows(record))
    labels = list(record.get("deployments") or {})
    k = _in_flight(record)
    latency = [(label, [("predicted", rows["predicted latency ms"][i], svg.PREDICTED),
                        ("p50", rows["p50 latency ms (1 in flight)"][i], svg.MEASURED),
                        ("p99", rows["p99 latency ms (1 in flight)"][i], "#7A8FB8")])
               for i, label in enumerate(labels)]
    throughput = [(label, [("predicted", rows["predicted throughput req/s"][i], svg.PREDICTED),
                           ("1 in flight", rows["throughput req/s (1 in flight)"][i], svg.MEASURED),
                           (f"{k} in flight", rows[f"throughput req/s ({k} in flight)"][i], "#7A8FB8")])
                  for i, label in enumerate(labels)]
    return ("<h3>End-to-end latency, ms (lower is better)</h3>" + svg.bar_rows(latency, "ms", "latency")
            + "<h3>Throughput, requests/s (higher is better)</h3>"
            + svg.bar_rows(throughput, "req/s", "throughput"))


def _unused(deployment: Mapping[str, Any]) -> str:
    explanation = deployment.get("explanation") or {}
    used = {s.get("node_id") for s in _stages(deployment)}
    names = explanation.get("node_names") or {}
    unused = sorted((explanation.get("filtered_or_unused") or {}).items())
    items = [f"<li>{escape(str(names.get(node, node)))}: {escape(str(reason))}</li>"
             for node, reason in unused if node not in used]
    return f"<p>Nodes not used:</p><ul>{''.join(items)}</ul>" if items else ""


def deployment_section(label: str, deployment: Mapping[str, Any], colours: Mapping[str, str]) -> str:
    placement = deployment.get("placement") or {}
    stages = _stages(deployment)
    energy = _predicted(deployment, "energy_mj")
    energy_text = "" if svg.finite(energy) is None else f", predicted energy {_fmt(energy, 1)} mJ/inference"
    return (f"<section><h2>{escape(label)}</h2>"
            f"<p>{len(stages)} stage(s), strategy {escape(str(placement.get('strategy') or '?'))}, "
            f"predicted latency {_fmt(_predicted(deployment, 'latency_ms'))} ms{energy_text}.</p>"
            f"<h3>Placement: the model's operators in order, coloured by node</h3>"
            f"{placement_strip(deployment, colours)}{legend(deployment, colours)}"
            f"<h3>Latency per stage, ms (1 in flight, mean)</h3>{stage_bars(deployment)}"
            f"{_unused(deployment)}</section>")


def render_report(record: Mapping[str, Any]) -> str:
    """The whole report as one HTML document (pure; see the module docstring for ``record``)."""
    colours = node_colours(record)
    requests, k = record.get("requests", "?"), _in_flight(record)
    rounds = f" in {record['rounds']} interleaved rounds" if record.get("rounds") else ""
    diff = svg.finite(record.get("max_abs_output_difference"))
    header = (f"<h1>Treeline demo report</h1><p>Measured {escape(str(record.get('measured_at') or 'n/a'))} "
              f"on {escape(str(record.get('machine') or 'an unnamed machine'))}: {escape(str(requests))} "
              f"requests one at a time and {escape(str(requests))} with {escape(str(k))} in flight to each "
              f"deployment{escape(rounds)}.</p>"
              + ("" if diff is None else f"<p>Largest output difference between deployments: {diff:.2e}.</p>")
              + '<p class="note">Predicted figures come from the planner; measured ones from this run, over '
                "emulated devices on one host. Numbers measured on a loaded machine vary from run to run."
                "</p>")
    sections = "".join(deployment_section(str(label), d, colours)
                       for label, d in (record.get("deployments") or {}).items())
    return ('<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>Treeline demo report</title>'
            f"<style>{CSS}</style></head><body>{header}<section><h2>Side by side</h2>{summary_table(record)}"
            f"{comparison_bars(record)}</section>{sections}</body></html>\n")


def write_report(record: Mapping[str, Any], path: Path) -> Path:
    """Render ``record`` and write it to ``path`` (parents created); returns ``path``.
    Raises OSError when the file cannot be written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_report(record), encoding="utf-8")
    return path


__all__ = ["node_colours", "placement_strip", "render_report", "stage_spans", "summary_rows", "write_report"]
