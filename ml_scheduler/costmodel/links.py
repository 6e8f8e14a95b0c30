"""Link figures for the cost model: measured where nodes measured them, declared otherwise.

The planner's link model (docs/contracts.md, "Scheduler v2 additions") charges a transfer
``d -> e`` the sender's RTT plus bytes over the sender's uplink. Nodes report measured links
in telemetry (``NodeTelemetry.links``, see ``node_engine.links``); the figure for ``d -> e``
is, by preference:

1. **pair**: ``d``'s measured link to ``e`` (a ``probe`` reading before a ``passive`` one);
2. **sender**: ``d``'s own ``uplink_mbps`` / ``link_rtt_ms``, which the cluster sets to the
   median of ``d``'s measured links when it has any (``NodeView.link_figures == "measured"``),
   else the figures its profile declares (``"declared"``).

Pure: no I/O, no clock.
"""

from __future__ import annotations

import itertools
import statistics
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from ml_scheduler.snapshot import LINK_DECLARED, LINK_MEASURED, LinkFigure

BYTES_PER_MS_PER_MBIT = 125.0
_SOURCE_RANK = {"probe": 0, "passive": 1}

FIGURES_PAIR = "measured (pair)"
FIGURES_SENDER = "measured (sender median)"


def link_figures_of(raw: Any) -> tuple[LinkFigure, ...]:
    """Telemetry ``links`` (``[{peer, rtt_ms, mbps, source}]``, validated on decode) as LinkFigures.

    Entries without a peer or with a non-positive throughput are left out; anything but a
    list gives ``()``.
    """
    if not isinstance(raw, list):
        return ()
    out = []
    for item in raw:
        if not isinstance(item, Mapping):
            continue
        peer, rtt, mbps = item.get("peer"), _number(item.get("rtt_ms")), _number(item.get("mbps"))
        if not peer or rtt is None or mbps is None or mbps <= 0 or rtt < 0:
            continue
        out.append(LinkFigure(str(peer), rtt, mbps, str(item.get("source") or "probe")))
    return tuple(out)


def _number(value: Any) -> float | None:
    """``value`` as a float when it is a (non-bool) number, else None."""
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def best_by_peer(links: Iterable[LinkFigure]) -> dict[str, LinkFigure]:
    """One figure per peer: a probe before a passive reading (ties: the first listed)."""
    best: dict[str, LinkFigure] = {}
    for link in links:
        held = best.get(link.peer)
        if held is None or _SOURCE_RANK.get(link.source, 2) < _SOURCE_RANK.get(held.source, 2):
            best[link.peer] = link
    return best


def sender_figures(links: Iterable[LinkFigure], declared_mbps: float | None,
                   declared_rtt_ms: float | None) -> dict[str, Any]:
    """NodeView ``uplink_mbps``, ``link_rtt_ms`` and ``link_figures`` of one sender.

    The median over its peers (one figure per peer, :func:`best_by_peer`) when it measured
    any, else the declared figures (left out when not declared: the NodeView defaults apply).
    """
    per_peer = list(best_by_peer(links).values())
    if per_peer:
        return {"uplink_mbps": statistics.median(x.mbps for x in per_peer),
                "link_rtt_ms": statistics.median(x.rtt_ms for x in per_peer),
                "link_figures": LINK_MEASURED}
    fields: dict[str, Any] = {"link_figures": LINK_DECLARED}
    if declared_mbps is not None:
        fields["uplink_mbps"] = float(declared_mbps)
    if declared_rtt_ms is not None:
        fields["link_rtt_ms"] = float(declared_rtt_ms)
    return fields


def link_matrices(devices: Sequence[Any], uplink_mbps: np.ndarray,
                  rtt_ms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(rtt ms, bandwidth bytes/ms)``, each ``(m, m)``: row = sender, column = receiver.

    ``uplink_mbps`` / ``rtt_ms`` (shape ``(m,)``) are the senders' own figures; an entry is
    replaced by the sender's measured link to that receiver where it has one.
    """
    m = len(devices)
    rtt = np.repeat(np.asarray(rtt_ms, dtype=float)[:, None], m, axis=1)
    bandwidth = np.repeat(np.asarray(uplink_mbps, dtype=float)[:, None] * BYTES_PER_MS_PER_MBIT, m, axis=1)
    column = {str(d.node_id): j for j, d in enumerate(devices)}
    for i, device in enumerate(devices):
        for peer, link in best_by_peer(getattr(device, "links", ())).items():
            j = column.get(peer)
            if j is not None and j != i:
                rtt[i, j] = link.rtt_ms
                bandwidth[i, j] = link.mbps * BYTES_PER_MS_PER_MBIT
    return rtt, bandwidth


def pair_source(sender: Any, receiver_id: str) -> str:
    """Where the figure of ``sender -> receiver_id`` comes from (see the module docstring)."""
    if receiver_id in best_by_peer(getattr(sender, "links", ())):
        return FIGURES_PAIR
    measured = getattr(sender, "link_figures", LINK_DECLARED) == LINK_MEASURED
    return FIGURES_SENDER if measured else LINK_DECLARED


def link_explanation(devices: Sequence[Any], chain: Sequence[str]) -> list[dict[str, Any]]:
    """For each hop of ``chain`` (node ids in stage order) between distinct nodes: its figures
    and where they come from (``measured (pair)``, ``measured (sender median)`` or ``declared``)."""
    by_id = {str(d.node_id): d for d in devices}
    hops = []
    for sender_id, receiver_id in itertools.pairwise(chain):
        sender = by_id.get(sender_id)
        if sender is None or sender_id == receiver_id:
            continue
        pair = best_by_peer(getattr(sender, "links", ())).get(receiver_id)
        hops.append({
            "from": sender_id, "to": receiver_id,
            "rtt_ms": round(pair.rtt_ms if pair else float(sender.link_rtt_ms), 4),
            "mbps": round(pair.mbps if pair else float(sender.uplink_mbps), 4),
            "figures": pair_source(sender, receiver_id),
        })
    return hops
