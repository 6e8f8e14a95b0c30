"""A few inline-SVG primitives for the offline HTML report (no plotting library, no JavaScript).

Every function returns an SVG fragment as a string. Text and attribute values are escaped
here (``html.escape`` with quotes), so a caller may pass any string, a node name included,
without producing markup. Numbers are written with at most two decimals. Coordinates are
SVG user units (pixels at 100 % zoom), origin top left.
"""

from __future__ import annotations

import math
from html import escape

# Colour-blind-safe qualitative palette (Okabe & Ito, "Color Universal Design", 2008), then
# Tableau 10 for deployments with more than eight nodes.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#999999",
           "#4E79A7", "#F28E2B", "#59A14F", "#B07AA1", "#76B7B2", "#EDC948", "#FF9DA7", "#9C755F")
PREDICTED = "#B8C4D6"  # bars of predicted figures: a pale neutral, so the measured ones stand out
MEASURED = "#2F4B7C"


def colour(index: int) -> str:
    """The palette's colour for the ``index``-th item (cycles after 16)."""
    return PALETTE[index % len(PALETTE)]


def num(value: float) -> str:
    """``value`` for an SVG attribute: at most two decimals, no trailing zeros."""
    text = f"{value:.2f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def _attrs(attrs: dict[str, object]) -> str:
    """`` key="value"`` pairs, escaped; a ``class_`` key is written ``class``; None is left out."""
    parts = []
    for key, value in attrs.items():
        if value is None:
            continue
        shown = num(value) if isinstance(value, float) else str(value)
        parts.append(f' {key.rstrip("_").replace("_", "-")}="{escape(shown, quote=True)}"')
    return "".join(parts)


def tooltip(title: str) -> str:
    """A ``<title>`` child: browsers show it on hover, without any script."""
    return f"<title>{escape(title)}</title>" if title else ""


def rect(x: float, y: float, width: float, height: float, fill: str, title: str = "",
         **attrs: object) -> str:
    """A filled rectangle; ``title`` becomes its hover text."""
    shape = _attrs({"x": float(x), "y": float(y), "width": float(max(width, 0.0)),
                    "height": float(height), "fill": fill, **attrs})
    return f"<rect{shape}>{tooltip(title)}</rect>"


def text(x: float, y: float, content: str, size: float = 12.0, anchor: str = "start",
         **attrs: object) -> str:
    """A text label at (``x``, baseline ``y``); ``anchor`` is start, middle or end."""
    where = _attrs({"x": float(x), "y": float(y), "font_size": float(size), "text_anchor": anchor, **attrs})
    return f"<text{where}>{escape(content)}</text>"


def line(x1: float, y1: float, x2: float, y2: float, stroke: str = "#333", width: float = 1.0,
         **attrs: object) -> str:
    """A straight line segment."""
    ends = _attrs({"x1": float(x1), "y1": float(y1), "x2": float(x2), "y2": float(y2),
                   "stroke": stroke, "stroke_width": float(width), **attrs})
    return f"<line{ends}/>"


def document(width: float, height: float, body: list[str], label: str) -> str:
    """An ``<svg>`` element of the given size holding ``body``; ``label`` is its accessible name."""
    frame = _attrs({"width": float(width), "height": float(height),
                    "viewBox": f"0 0 {num(width)} {num(height)}", "role": "img", "aria_label": label,
                    "font_family": "sans-serif"})
    return f"<svg{frame}>" + "".join(body) + "</svg>"


def finite(value: object) -> float | None:
    """``value`` as a finite float, or None (missing, NaN, infinite or not a number)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def bar_rows(rows: list[tuple[str, list[tuple[str, float | None, str]]]], unit: str,
             label: str, width: float = 720.0) -> str:
    """A horizontal grouped bar chart: one group per row, one bar per (series, value, colour).

    ``rows`` are ``(row label, [(series name, value, fill), ...])``; every bar shares one linear
    scale from 0 to the largest value. A missing value (None) draws no bar and the label "n/a".
    Each bar has class ``bar`` and a hover title "row: series value unit".
    """
    label_w, bar_h, gap, right = 230.0, 14.0, 10.0, 140.0
    values = [v for _, bars in rows for _, v, _ in bars if v is not None]
    top = max(values, default=0.0) or 1.0
    scale = (width - label_w - right) / top
    body, y = [], 8.0
    for row_label, bars in rows:
        body.append(text(label_w - 8, y + bar_h * len(bars) / 2 + 4, row_label, anchor="end"))
        for series, value, fill in bars:
            shown = "n/a" if value is None else f"{value:.2f} {unit}"
            if value is not None:
                body.append(rect(label_w, y, value * scale, bar_h - 2, fill,
                                 title=f"{row_label}: {series} {shown}", class_="bar"))
            body.append(text(label_w + (value or 0.0) * scale + 4, y + bar_h - 4,
                             f"{series} {shown}", size=10))
            y += bar_h
        y += gap
    body.append(line(label_w, 2, label_w, y - gap + 2, stroke="#666"))
    return document(width, y, body, label)
