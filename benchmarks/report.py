"""How every benchmark prints its figures: one (metric, value) table on stdout.

Its own module so that each suite can print without importing another suite
(``planner`` runs ``greedy``; ``greedy`` only needs this table).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def print_table(rows: Sequence[tuple[str, Any]]) -> None:
    """Two-column table of (metric, value) rows on stdout; lists and dicts stay in the JSON only."""
    shown_rows = [(name, value) for name, value in rows if not isinstance(value, (list, dict))]
    width = max((len(name) for name, _ in shown_rows), default=10)
    for name, value in shown_rows:
        shown = f"{value:.4g}" if isinstance(value, float) else str(value)
        print(f"{name:<{width}}  {shown}")
