"""``treeline demo``'s HTML report, rendered from a fixed result dict (the shape of demo_results.json).

Checks what a reader relies on: one coloured segment per stage, the same colour for a node in
every strip, cuts marked with their tensor sizes, a bar per stage, the legend's node names, the
printed table's figures, and a page that parses, escapes the record's strings and fetches nothing.
"""

from __future__ import annotations

import copy
import math
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from treeline_cli import main as cli_main
from treeline_cli.commands import stack as stack_commands
from treeline_cli.report_html import render_report, stage_spans, write_report


def stage(index: int, node: str, name: str, cut: int, compute: float, transfer: float,
          flops: int) -> dict[str, Any]:
    return {"index": index, "node_id": node, "node_name": name, "profile": name.split("-")[0], "flops": flops,
            "cut_bytes": cut, "stage_key": f"d/1/{index}", "predicted_compute_ms": compute,
            "predicted_transfer_in_ms": transfer, "endpoint": "tcp://127.0.0.1:1"}


def report(p50: float, stage_ms: dict[str, float], link_ms: dict[str, float] | None = None) -> dict[str, Any]:
    return {"requests": 40, "p50_ms": p50, "p99_ms": p50 * 3, "mean_ms": p50, "throughput_rps": 1000 / p50,
            "in_flight": 1, "stage_ms": stage_ms, "link_ms": link_ms or {}, "failed": 0, "errors": {}}


SPLIT = {
    "placement": {"strategy": "flops-balanced",
                  "predicted": {"latency_ms": 146.59, "throughput_rps": 8.5, "energy_mj": 352.6},
                  "stages": [stage(0, "n-rpi", "rpi4-1", 702464, 16.25, 0.0, 203_000_000),
                             stage(1, "n-srv", "server-1", 526848, 2.46, 117.39, 206_000_000),
                             stage(2, "n-jet", "<b>jetson</b>", 0, 5.77, 4.71, 204_000_000)]},
    "explanation": {"plan": {"stages": [{"index": 0, "start": 0, "end": 25},
                                        {"index": 1, "start": 25, "end": 70},
                                        {"index": 2, "start": 70, "end": 100}]},
                    "filtered_or_unused": {}, "node_names": {}},
    "latency": report(163.47, {"d/1/0": 21.95, "d/1/1": 2.67, "d/1/2": 7.41},
                      {"d/1/0": 118.43, "d/1/1": 5.33}),
    "throughput": {**report(150.0, {}), "in_flight": 4, "throughput_rps": 9.1},
}
SINGLE = {
    "placement": {"strategy": "optimal", "predicted": {"latency_ms": 9.23, "throughput_rps": 108.4},
                  "stages": [stage(0, "n-srv", "server-1", 0, 9.23, 0.0, 614_000_000)]},
    "explanation": {"filtered_or_unused": {"n-rpi": "not_selected: <not needed>"},
                    "node_names": {"n-rpi": "rpi4-1"}},
    "latency": report(4.07, {"d/1/0": 5.09}),
    "throughput": {**report(4.5, {}), "in_flight": 4, "throughput_rps": float("nan")},
}
RECORD = {"requests": 40, "in_flight": 4, "rounds": 4, "measured_at": "2026-11-30T10:00:00+00:00",
          "machine": "ci (x86_64, 2 CPUs, Linux)", "max_abs_output_difference": 1.2e-6,
          "deployments": {"FLOPs-balanced split": SPLIT, "single strongest node": SINGLE}}


class Elements(HTMLParser):
    """Every start tag as (tag, attrs, text up to the next tag), and any nesting error."""

    def __init__(self) -> None:
        super().__init__()
        self.elements: list[tuple[str, dict[str, str], str]] = []
        self.open: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append((tag, {k: v or "" for k, v in attrs}, ""))
        if tag not in ("meta", "br", "hr", "img", "link", "input"):  # HTML void elements
            self.open.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append((tag, {k: v or "" for k, v in attrs}, ""))

    def handle_endtag(self, tag: str) -> None:
        assert self.open and self.open[-1] == tag, f"</{tag}> closes <{self.open[-1] if self.open else None}>"
        self.open.pop()

    def handle_data(self, data: str) -> None:
        if self.elements:
            tag, attrs, text = self.elements[-1]
            self.elements[-1] = (tag, attrs, text + data)

    def titles(self, tag: str, cls: str) -> list[str]:
        """The hover text (``<title>`` child) of each ``tag`` of class ``cls``."""
        pairs = zip(self.elements, [*self.elements[1:], ("", {}, "")], strict=True)
        return [after[2] for (g, a, _), after in pairs
                if g == tag and a.get("class") == cls and after[0] == "title"]

    def find(self, tag: str, cls: str | None = None) -> list[tuple[dict[str, str], str]]:
        return [(a, t) for g, a, t in self.elements if g == tag and (cls is None or a.get("class") == cls)]


def parse(page: str) -> Elements:
    parser = Elements()
    parser.feed(page)
    parser.close()
    assert not parser.open, f"never closed: {parser.open}"
    return parser


def charts(page: str, label: str) -> list[Elements]:
    """The page's ``<svg>`` pictures whose aria-label is ``label``, each parsed on its own."""
    parsed = [parse(block) for block in re.findall(r"<svg.*?</svg>", page, flags=re.S)]
    return [p for p in parsed if p.find("svg")[0][0]["aria-label"] == label]


def test_each_strip_has_one_segment_per_stage_coloured_by_node_with_cuts_and_legend() -> None:
    page = render_report(RECORD)
    split_strip, single_strip = charts(page, "placement strip")
    segments = split_strip.find("rect", "stage")
    assert split_strip.titles("rect", "stage")[2] == "stage 2: <b>jetson</b>, ops 70-100, 204.0 MFLOPs"
    assert len(segments) == 3 and len(single_strip.find("rect", "stage")) == 1
    fills = [a["fill"] for a, _ in segments]
    assert len(set(fills)) == 3, "one colour per node"
    assert single_strip.find("rect", "stage")[0][0]["fill"] == fills[1], "server-1 has one colour everywhere"
    widths = [float(a["width"]) for a, _ in segments]
    assert widths[1] / widths[0] == pytest.approx(45 / 25, rel=0.01), "widths follow the operator ranges"
    assert [t for _, t in split_strip.find("text", "cut-label")] == ["cut 686.0 KB", "cut 514.5 KB"]
    assert len(split_strip.find("line", "cut")) == 2 and not single_strip.find("line", "cut")
    legend = re.findall(r'<p class="legend">(.*?)</p>', page)
    assert all(name in legend[0] for name in ("rpi4-1 (rpi4)", "server-1 (server)", "&lt;b&gt;jetson"))


def test_stage_bars_compare_predicted_with_measured_per_stage_and_link() -> None:
    split, single = charts(render_report(RECORD), "latency per stage")
    assert split.titles("rect", "bar") == [
        "stage 0 compute (rpi4-1): predicted 16.25 ms", "stage 0 compute (rpi4-1): measured 21.95 ms",
        "stage 1 compute (server-1): predicted 2.46 ms", "stage 1 compute (server-1): measured 2.67 ms",
        "stage 2 compute (<b>jetson</b>): predicted 5.77 ms",
        "stage 2 compute (<b>jetson</b>): measured 7.41 ms",
        "link 0 to 1 (686.0 KB): predicted 117.39 ms", "link 0 to 1 (686.0 KB): measured 118.43 ms",
        "link 1 to 2 (514.5 KB): predicted 4.71 ms", "link 1 to 2 (514.5 KB): measured 5.33 ms"]
    assert len(single.find("rect", "bar")) == 2


def test_side_by_side_table_has_the_printed_figures_and_missing_ones_read_na() -> None:
    page = render_report(RECORD)
    rows = dict(re.findall(r"<tr><th>([^<]*)</th>((?:<td[^>]*>[^<]*</td>)+)</tr>", page))
    cells = {name: re.findall(r">([^<]*)</td>", tds) for name, tds in rows.items()}
    assert cells["p50 latency ms (1 in flight)"] == ["163.47", "4.07"]
    assert cells["predicted latency ms"] == ["146.59", "9.23"]
    assert cells["throughput req/s (4 in flight)"] == ["9.10", "n/a"]
    assert cells["predicted energy per inference mJ"] == ["352.60", "n/a"]
    (throughput,) = charts(page, "throughput")
    assert len(throughput.find("rect", "bar")) == 5, "no bar for the NaN figure"
    assert "Measured 2026-11-30T10:00:00+00:00 on ci (x86_64, 2 CPUs, Linux): 40 requests" in page
    assert "loaded machine vary" in page and "rpi4-1: not_selected: &lt;not needed&gt;" in page


def test_page_parses_escapes_strings_and_needs_no_network_or_script() -> None:
    page = render_report(RECORD)
    parser = parse(page)
    assert "<b>" not in page and not parser.find("b")
    assert not parser.find("script") and not parser.find("link") and not parser.find("img")
    urls = [v for _, attrs, _ in parser.elements for v in attrs.values() if re.search(r"https?:|//|url\(", v)]
    assert urls == [] and not re.search(r"https?://|@import", page)


def test_a_record_with_nothing_measured_still_renders() -> None:
    bare = {"deployments": {"x": {"placement": {"stages": [{"index": 0, "node_id": "n"}]}}}}
    page = render_report(bare)
    assert page.count('class="stage"') == 1 and "n/a" in page
    broken: dict[str, Any] = copy.deepcopy(SPLIT)
    broken["explanation"]["plan"]["stages"][1]["end"] = math.nan
    assert [what for *_, what in stage_spans(broken)] == ["203.0 MFLOPs", "206.0 MFLOPs", "204.0 MFLOPs"]


def test_write_report_creates_the_file(tmp_path: Path) -> None:
    target = write_report(RECORD, tmp_path / "sub" / "report.html")
    assert target.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")


def test_demo_report_option_refuses_a_directory_before_starting(capsys: pytest.CaptureFixture[str],
                                                                monkeypatch: pytest.MonkeyPatch,
                                                                tmp_path: Path) -> None:
    started: list[Any] = []
    monkeypatch.setattr(stack_commands, "start_stack", started.append)
    monkeypatch.chdir(tmp_path)
    code = cli_main.main(["demo", "--report", str(tmp_path)])
    err = capsys.readouterr().err.splitlines()
    assert code == 2 and len(err) == 1 and "--report" in err[0] and "directory" in err[0], err
    assert not started
