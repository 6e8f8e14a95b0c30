"""Measured links: the estimator, the link book, probes over real zmq sockets on loopback,
passive samples from forwarded tensors, and the cost model's choice of measured over declared."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import zmq
from treeline_test_helpers import start_data_plane_server as _server

from cluster_orchestrator.planning import node_view_fields
from ml_scheduler.costmodel.links import (
    FIGURES_PAIR,
    FIGURES_SENDER,
    link_explanation,
    link_figures_of,
    link_matrices,
    sender_figures,
)
from ml_scheduler.snapshot import LINK_DECLARED, LINK_MEASURED, LinkFigure, NodeView
from node_engine.data_plane.client import TensorClient
from node_engine.data_plane.probe import Prober, ProbeResult, estimate
from node_engine.data_plane.server import DataPlaneServer
from node_engine.emulation import EmulatedLink
from node_engine.links import LinkBook, ewma, passive_mbps, routed_peers
from node_engine.stages import RELAY_SESSION, LoadedStage, StageTable
from treeline_common.clock import FakeClock, SystemClock
from treeline_common.messages import LinkReading, NextStage, NodeTelemetry, PayloadError, decode, encode


@pytest.fixture
def servers() -> list[DataPlaneServer]:
    started: list[DataPlaneServer] = []
    yield started  # type: ignore[misc]
    for server in started:
        server.close()


# ---------------------------------------------------------------- estimator


@pytest.mark.parametrize(("pings", "bursts", "size", "rtt", "mbps"), [
    ([5.2, 5.0, 5.9], [47.0, 46.0, 60.0], 262_144, 5.0, 262_144 / 41.0 / 125),  # min ping, fastest burst
    ([1.0], [1.0], 1000, 1.0, 1000 / 1e-3 / 125),  # a burst no slower than a ping: the floor
])
def test_estimate_takes_the_fastest_ping_and_the_fastest_burst(
        pings: list[float], bursts: list[float], size: int, rtt: float, mbps: float) -> None:
    result = estimate(pings, bursts, size)
    assert result.rtt_ms == pytest.approx(rtt) and result.mbps == pytest.approx(mbps)
    assert result.samples == len(pings) + len(bursts)


def test_estimate_refuses_no_samples() -> None:
    with pytest.raises(ValueError):
        estimate([], [1.0], 10)


def test_ewma_and_passive_throughput() -> None:
    assert ewma(None, 10.0) == 10.0
    assert ewma(10.0, 20.0, 0.25) == pytest.approx(12.5)
    assert passive_mbps(250_000, 45.0, 5.0) == pytest.approx(50.0)  # 250 kB in 40 ms = 50 Mbit/s


def test_link_book_passive_uses_the_probe_rtt_and_old_readings_expire() -> None:
    clock = FakeClock()
    book = LinkBook(clock, alpha=0.5, max_age=10.0)
    book.record_passive("b", 250_000, 40.0)  # no probe yet: effective throughput (rtt 0)
    assert [(r.source, r.mbps, r.rtt_ms) for r in book.readings()] == [("passive", 50.0, 40.0)]
    book.record_probe("b", ProbeResult(5.0, 49.0, 8))
    book.record_passive("b", 250_000, 45.0)  # 40 ms after the 5 ms rtt: 50 Mbit/s again
    probe, passive = book.readings()
    assert (probe.source, probe.mbps, probe.samples) == ("probe", 49.0, 8)
    assert (passive.mbps, passive.rtt_ms, passive.samples) == (pytest.approx(50.0), 5.0, 2)
    clock.advance(11.0)
    assert book.readings() == []


def test_routed_peers_skip_colocated_stages() -> None:
    table = StageTable()
    table.put(LoadedStage("d/0", "d", 0, "x", 1, RELAY_SESSION, NextStage("n2", "tcp://h:2", "d/1")))
    table.put(LoadedStage("d/1", "d", 1, "x", 1, RELAY_SESSION, NextStage("n1", "tcp://h:1", "d/2")))
    table.put(LoadedStage("d/2", "d", 2, "x", 1, RELAY_SESSION, None))
    assert list(routed_peers(table, ("tcp://h:1",))) == ["n2"]


# ---------------------------------------------------------------- probes and passive samples on loopback


def test_probe_of_an_emulated_link_agrees_with_its_figures(servers: list[DataPlaneServer]) -> None:
    peer = _server(servers, StageTable(), "peer")  # serves no stage at all: probes need none
    link = EmulatedLink(uplink_mbps=10.0, rtt_ms=10.0)  # an rpi-zero: the host's own ~0.2 ms is 2 %
    ctx: zmq.Context[object] = zmq.Context()
    try:
        prober = Prober(ctx, peer.endpoint, SystemClock(), threading.Event(), delay_ms=link.delay_ms)
        result = prober.measure(burst_bytes=64 * 1024)  # 52 ms a burst
        prober.close()
    finally:
        ctx.term()
    assert abs(result.rtt_ms - 10.0) / 10.0 <= 0.10, result
    assert abs(result.mbps - 10.0) / 10.0 <= 0.10, result


def test_forwards_report_passive_samples_with_the_emulated_wait(servers: list[DataPlaneServer]) -> None:
    samples: list[tuple[str, int, float]] = []
    table_a, table_b = StageTable(), StageTable()
    server_b = _server(servers, table_b, "b")
    table_b.put(LoadedStage("d/1", "d", 1, "x", 1, RELAY_SESSION, None))
    server_a = _server(servers, table_a, "a", EmulatedLink(uplink_mbps=100.0, rtt_ms=2.0),
                       on_transfer=lambda *s: samples.append(s))
    table_a.put(LoadedStage("d/0", "d", 0, "x", 1, RELAY_SESSION, NextStage("b", server_b.endpoint, "d/1")))
    x = np.zeros(25_000, dtype=np.float32)  # 100 kB: 2 + 8 = 10 ms on the emulated uplink
    with TensorClient(server_a.endpoint) as client:
        client.infer_many("d/0", [{"x": x}] * 3, max_in_flight=1, timeout=10.0)
    assert [(endpoint, size) for endpoint, size, _ in samples] == [(server_b.endpoint, x.nbytes)] * 3
    assert all(10.0 <= ms < 40.0 for _, _, ms in samples), samples


# ---------------------------------------------------------------- the cost model: measured over declared


def _view(node_id: str, links: tuple[LinkFigure, ...] = (), **fields: object) -> NodeView:
    figures = sender_figures(links, 50.0, 5.0)
    return NodeView(node_id, node_id, "rpi4", True, 1.0, None, links=links,
                    **{**figures, **fields})  # type: ignore[arg-type]


def test_links_from_telemetry_and_the_sender_median() -> None:
    raw = [{"peer": "b", "rtt_ms": 4.0, "mbps": 20.0, "source": "passive"},
           {"peer": "b", "rtt_ms": 6.0, "mbps": 40.0, "source": "probe"},
           {"peer": "c", "rtt_ms": 8.0, "mbps": 60.0, "source": "probe"},
           {"peer": "", "rtt_ms": 1.0, "mbps": 1.0}, {"peer": "d", "rtt_ms": 1.0, "mbps": 0}, "junk"]
    links = link_figures_of(raw)
    assert [link.peer for link in links] == ["b", "b", "c"]
    # one figure per peer (the probe for b), then the median over peers
    assert sender_figures(links, 50.0, 5.0) == {"uplink_mbps": 50.0, "link_rtt_ms": 7.0,
                                                "link_figures": LINK_MEASURED}
    assert sender_figures((), 50.0, 5.0) == {"uplink_mbps": 50.0, "link_rtt_ms": 5.0,
                                             "link_figures": LINK_DECLARED}


def test_cost_matrices_use_the_measured_pair_else_the_sender_figures() -> None:
    a = _view("a", (LinkFigure("b", 9.0, 10.0),))
    b = _view("b")
    c = _view("c")
    views = [a, b, c]
    rtt, bandwidth = link_matrices(views, np.array([v.uplink_mbps for v in views]),
                                   np.array([v.link_rtt_ms for v in views]))
    assert (rtt[0, 1], bandwidth[0, 1]) == (9.0, 10.0 * 125)  # a -> b: measured pair
    assert (rtt[0, 2], bandwidth[0, 2]) == (9.0, 10.0 * 125)  # a -> c: a's measured median (one link)
    assert (rtt[1, 2], bandwidth[1, 2]) == (5.0, 50.0 * 125)  # b -> c: declared
    hops = link_explanation(views, ["a", "b", "c"])
    assert [h["figures"] for h in hops] == [FIGURES_PAIR, LINK_DECLARED]
    assert link_explanation(views, ["a", "c"])[0]["figures"] == FIGURES_SENDER


def test_node_view_fields_prefer_measured_links_over_declared() -> None:
    doc = {"node_id": "n", "name": "n", "online": True, "uplink_mbps": 50.0, "link_rtt_ms": 5.0,
           "telemetry": {"links": [{"peer": "m", "rtt_ms": 7.5, "mbps": 30.0, "source": "probe"}]}}
    view = NodeView(**node_view_fields(doc))
    assert (view.uplink_mbps, view.link_rtt_ms, view.link_figures) == (30.0, 7.5, LINK_MEASURED)
    assert view.links == (LinkFigure("m", 7.5, 30.0, "probe"),)
    declared = NodeView(**node_view_fields({**doc, "telemetry": {"links": None}}))
    assert (declared.uplink_mbps, declared.link_rtt_ms, declared.link_figures) == (50.0, 5.0, LINK_DECLARED)


def test_telemetry_links_are_validated_on_decode() -> None:
    telemetry = NodeTelemetry("n", 1.0, 1.0, 1, 1.0, 1, 1, 1, links=[LinkReading("m", 5.0, 50.0)])
    assert decode(NodeTelemetry, encode(telemetry)).links == [LinkReading("m", 5.0, 50.0)]
    bad = encode(telemetry).replace(b'"probe"', b'"guess"')
    with pytest.raises(PayloadError, match=r"links\[0\]\.source"):
        decode(NodeTelemetry, bad)
