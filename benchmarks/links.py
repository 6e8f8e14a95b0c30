"""Measured links benchmark: how close the node engine's link estimates come to the emulated links.

Run ``python -m benchmarks.links [--quick] [--json PATH]`` (its figures are also part of
``python -m benchmarks.dataplane``). For each emulated profile with a declared uplink
(``rpi4``, ``rpi-zero``, ``jetson-nano``), a sender charging that uplink
(:class:`~node_engine.emulation.EmulatedLink`) probes a real
:class:`~node_engine.data_plane.server.DataPlaneServer` on loopback with the node engine's own
:class:`~node_engine.data_plane.probe.Prober` (pings, then 256 KB bursts), and forwards real
100 KB tensors to it for passive samples (:class:`~node_engine.links.LinkBook`). Reported:
``link_<profile>_rtt_error`` / ``_mbps_error`` (relative, probe), ``link_<profile>_passive_mbps_error``,
and ``link_estimate_error`` [<= 0.10]: the worst probe error over every profile and figure.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
import zmq

from benchmarks.report import quick_main
from node_engine.data_plane.client import TensorClient
from node_engine.data_plane.probe import Prober
from node_engine.data_plane.server import DataPlaneServer
from node_engine.emulation import EmulatedLink, Emulator
from node_engine.links import LinkBook
from node_engine.stages import RELAY_SESSION, LoadedStage, StageRunner, StageTable
from treeline_common.clock import SystemClock
from treeline_common.messages import NextStage
from treeline_common.profiles import get_profile

PROFILES = ("rpi4", "rpi-zero", "jetson-nano")
GOAL = 0.10
TENSOR_FLOATS = 25_600  # 100 KB


def _error(measured: float, declared: float) -> float:
    return abs(measured - declared) / declared


def measure_profile(name: str, requests: int) -> dict[str, float]:
    """Probe and passive errors of one profile's emulated uplink (relative to its declared figures)."""
    profile = get_profile(name)
    link = EmulatedLink(profile.uplink_mbps, profile.link_rtt_ms)
    clock = SystemClock()
    book = LinkBook(clock)
    sink_table, sender_table = StageTable(), StageTable()
    sink = DataPlaneServer(sink_table, StageRunner(Emulator(1.0)), name="sink")
    sender = DataPlaneServer(sender_table, StageRunner(Emulator(1.0, link=link)), name="sender",
                             on_transfer=lambda _e, size, ms: book.record_passive("sink", size, ms))
    ctx: zmq.Context[Any] = zmq.Context()
    try:
        sink_table.put(LoadedStage("b/1", "b", 1, "x", 1, RELAY_SESSION, None))
        sink.start()
        sender_table.put(LoadedStage("b/0", "b", 0, "x", 1, RELAY_SESSION,
                                     NextStage("sink", sink.endpoint, "b/1")))
        sender.start()
        prober = Prober(ctx, sink.endpoint, clock, threading.Event(), delay_ms=link.delay_ms)
        try:
            probe = book.record_probe("sink", prober.measure())
        finally:
            prober.close()
        x = np.zeros(TENSOR_FLOATS, dtype=np.float32)
        with TensorClient(sender.endpoint, context=ctx) as client:
            client.infer_many("b/0", [{"x": x}] * requests, max_in_flight=1, timeout=30.0)
        passive = next(r for r in book.readings() if r.source == "passive")
    finally:
        sender.close()
        sink.close()
        ctx.term()
    return {"rtt_ms": probe.rtt_ms, "mbps": probe.mbps, "passive_mbps": passive.mbps,
            "rtt_error": _error(probe.rtt_ms, profile.link_rtt_ms),
            "mbps_error": _error(probe.mbps, profile.uplink_mbps),
            "passive_mbps_error": _error(passive.mbps, profile.uplink_mbps)}


def run(quick: bool) -> dict[str, Any]:
    """``link_estimate_error`` and the per-profile figures behind it."""
    result: dict[str, Any] = {}
    worst = 0.0
    for name in PROFILES:
        figures = measure_profile(name, 3 if quick else 10)
        key = name.replace("-", "_")
        for field, value in figures.items():
            result[f"link_{key}_{field}"] = value
        worst = max(worst, figures["rtt_error"], figures["mbps_error"])
    result["link_estimate_error"] = worst
    result["link_estimate_goal_met"] = worst <= GOAL
    return result


def main(argv: Sequence[str] | None = None) -> int:
    return quick_main(__doc__, "links", "fewer tensors per profile (a few seconds)", run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
