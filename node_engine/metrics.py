"""Prometheus metrics of one node engine, served on ``--metrics-port`` (off by default).

One :class:`NodeMetrics` per engine owns its own ``CollectorRegistry`` (never the library's
global one: tests run several engines in one process). What it exposes (all names prefixed
``treeline_node_``):

- ``stage_latency_seconds{stage}`` (histogram): the compute time of one request at one stage
  (the emulated slowdown included, as callers see it in the reply's timings), observed by
  :class:`MeasuredRunner` around every run; a relay stage observes 0;
- ``stage_requests_total{stage}``: requests each stage served (its ``StageCounters``, read at
  scrape time);
- ``requests_in_flight``, ``awaiting_ack``, ``awaiting_answer`` (gauges): the data plane's
  ledger, read at scrape time through :meth:`DataPlaneServer.held`; ``requests_in_flight`` is
  the queue depth (requests admitted and not answered: computing, queued for a worker or the
  emulated link, or awaiting the pipeline's answer), bounded by ``max_in_flight``;
- ``errors_total{code}``: error answers the data plane sent, by code
  (:data:`treeline_common.tensor_wire.ERROR_CODES`; :meth:`DataPlaneServer.errors`);
- ``stages_loaded`` (gauge).

Collectors read the current state at scrape time; only the latency histogram is updated on
the request path (one lock-protected add per run). :meth:`NodeMetrics.serve` starts
prometheus_client's own WSGI server in a daemon thread (``GET /metrics``, text format).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Mapping
from typing import Protocol
from wsgiref.simple_server import WSGIServer

import numpy as np
from prometheus_client import CollectorRegistry, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from node_engine.data_plane.server import Held
from node_engine.emulation import Emulator
from node_engine.stages import LoadedStage, StageRunner, StageTable
from treeline_common.clock import Clock

log = logging.getLogger(__name__)

# stage compute times run from ~0.1 ms (a tiny partition) to seconds (an emulated Pi)
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class DataPlaneView(Protocol):
    """What the collector reads off the data plane (``DataPlaneServer``), from any thread."""

    def held(self) -> Held: ...

    def errors(self) -> dict[str, int]: ...


class MeasuredRunner(StageRunner):
    """A :class:`StageRunner` that observes every run's compute time in ``latency``
    (labelled by stage key). A run that raises observes nothing (the data plane counts the
    ``stage_failed`` error it answers)."""

    def __init__(self, latency: Histogram, emulator: Emulator | None = None,
                 clock: Clock | None = None) -> None:
        super().__init__(emulator, clock)
        self._latency = latency

    def run(self, stage: LoadedStage,
            inputs: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], float]:
        outputs, compute_ms = super().run(stage, inputs)
        self._latency.labels(stage=stage.key).observe(compute_ms / 1000.0)
        return outputs, compute_ms


class DataPlaneCollector(Collector):
    """The data plane's ledger, error counts and stage counters, read at scrape time."""

    def __init__(self, stages: StageTable, plane: DataPlaneView) -> None:
        self._stages = stages
        self._plane = plane

    def collect(self) -> Iterable[GaugeMetricFamily | CounterMetricFamily]:
        held = self._plane.held()
        yield GaugeMetricFamily("treeline_node_requests_in_flight",
                                "requests admitted and not yet answered (the data plane's queue depth)",
                                value=held.in_flight)
        yield GaugeMetricFamily("treeline_node_awaiting_ack", "forwards sent and not yet acknowledged",
                                value=held.awaiting_ack)
        yield GaugeMetricFamily("treeline_node_awaiting_answer",
                                "requests entered here whose pipeline answer has not come back",
                                value=held.awaiting_answer)
        errors = CounterMetricFamily("treeline_node_errors", "error answers sent, by code", labels=["code"])
        for code, count in sorted(self._plane.errors().items()):
            errors.add_metric([code], count)
        yield errors
        served = CounterMetricFamily("treeline_node_stage_requests", "requests served, by stage key",
                                     labels=["stage"])
        stages = self._stages.all()
        for stage in stages:
            served.add_metric([stage.key], stage.counters.snapshot()[0])
        yield served
        yield GaugeMetricFamily("treeline_node_stages_loaded", "stages this node serves", value=len(stages))


class NodeMetrics:
    """The metrics of one node engine (see the module docstring). No I/O until :meth:`serve`."""

    def __init__(self, stages: StageTable) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._stages = stages
        self.latency = Histogram("treeline_node_stage_latency_seconds",
                                 "compute time of one request at one stage (emulated slowdown included)",
                                 ["stage"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self._http: tuple[WSGIServer, threading.Thread] | None = None
        self.address = ""

    def runner(self, emulator: Emulator | None = None, clock: Clock | None = None) -> MeasuredRunner:
        """The stage runner whose runs feed :attr:`latency`."""
        return MeasuredRunner(self.latency, emulator, clock)

    def attach(self, plane: DataPlaneView) -> None:
        """Expose ``plane``'s ledger and error counts (once; ValueError on a second call)."""
        self.registry.register(DataPlaneCollector(self._stages, plane))

    def serve(self, port: int, host: str = "127.0.0.1", plane: DataPlaneView | None = None) -> str:
        """Serve ``GET /metrics`` on ``host:port`` (0: a free port) in a daemon thread, with
        ``plane`` attached when given; returns and logs the URL. OSError when the port cannot be bound."""
        if plane is not None:
            self.attach(plane)
        server, thread = start_http_server(port, addr=host, registry=self.registry)
        self._http = (server, thread)
        self.address = f"http://{host}:{server.server_port}/metrics"
        log.info("metrics (Prometheus) on %s", self.address)
        return self.address

    def close(self) -> None:
        """Stop the metrics server; idempotent."""
        if self._http is None:
            return
        server, thread = self._http
        self._http = None
        server.shutdown()
        server.server_close()
        thread.join(2)


def make_runner(metrics: NodeMetrics | None, emulator: Emulator, clock: Clock) -> StageRunner:
    """The engine's stage runner: measured when metrics are on, the plain one otherwise."""
    return metrics.runner(emulator, clock) if metrics is not None else StageRunner(emulator, clock)
