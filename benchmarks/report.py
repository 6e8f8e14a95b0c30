"""How every benchmark takes its options and reports its figures.

One (metric, value) table on stdout and, for the suites that keep their figures, the same
mapping as sorted JSON under ``benchmarks/results/``. Its own module so that each suite can
report without importing another suite (``planner`` runs ``greedy``; ``greedy`` only needs the
table).
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).parent / "results"


def print_table(rows: Sequence[tuple[str, Any]]) -> None:
    """Two-column table of (metric, value) rows on stdout; lists and dicts stay in the JSON only."""
    shown_rows = [(name, value) for name, value in rows if not isinstance(value, (list, dict))]
    width = max((len(name) for name, _ in shown_rows), default=10)
    for name, value in shown_rows:
        shown = f"{value:.4g}" if isinstance(value, float) else str(value)
        print(f"{name:<{width}}  {shown}")


def benchmark_parser(doc: str | None, quick_help: str | None = None) -> argparse.ArgumentParser:
    """A suite's parser: the first line of its module docstring as description, and ``--quick``."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0] if doc else None)
    parser.add_argument("--quick", action="store_true", help=quick_help)
    return parser


def add_json_option(parser: argparse.ArgumentParser, suite: str) -> None:
    """``--json PATH``, by default ``benchmarks/results/<suite>.json`` (the figures the docs cite)."""
    parser.add_argument("--json", type=Path, default=RESULTS_DIR / f"{suite}.json",
                        help="where to write the JSON report")


def report(result: Mapping[str, Any], json_path: Path) -> None:
    """Print ``result`` as the table, sorted by metric, and write it to ``json_path`` as sorted JSON.

    The JSON holds every figure (lists and dicts included) and replaces any earlier file there.
    """
    print_table(sorted(result.items()))
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")


def quick_main(doc: str | None, suite: str, quick_help: str, run: Callable[[bool], Mapping[str, Any]],
               argv: Sequence[str] | None = None) -> int:
    """The ``main`` of a benchmark whose only option is ``--quick``: parse, run, print and write
    ``benchmarks/results/<suite>.json`` (or ``--json PATH``) with ``quick`` recorded."""
    parser = benchmark_parser(doc, quick_help)
    add_json_option(parser, suite)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    report({**run(args.quick), "quick": args.quick}, args.json)
    return 0
