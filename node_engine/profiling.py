"""Per-op profiling of a whole model on this node, answering ``ProfileCommand``.

Why on the node: the planner needs op times of *this* device class with *this* runtime, and
onnxruntime's own profiler is the only honest source for them. The model runs with the same
session settings as a serving stage (``node_engine.runtime.profile_model``), so the kernels
timed are the ones that serve, fusions included.

Contract (see :class:`treeline_common.messages.ProfileCommand` / ``ProfileResult``):

- download and sha256-check the model like a deploy does (:mod:`node_engine.artifacts`);
- run ``warmup`` + ``runs`` times with random inputs of the declared shapes; the trace file
  is deleted afterwards;
- ``op_ms``: the median over the timed runs of each ONNX node's kernel time, in ms. ORT
  renames the kernels it rewrites (``<output tensor>_nchwc`` for a fused NCHWc conv), so a
  kernel is credited to the ONNX node of that name, else to the node producing the tensor
  the kernel is named after; kernels ORT inserts (``ReorderOutput``...) are added to the
  kernel before them (the first ones to the next). Ops fused away have no entry; the cost
  model spreads their group's time back (``ml_scheduler.costmodel.optimes``);
- ``total_ms``: the median wall time of ``session.run``;
- an emulated node scales every time by ``1 / speed_factor``, the slowdown its stages get
  (:mod:`node_engine.emulation`);
- any failure is answered with ``error`` set and an empty ``op_ms``.

Commands run on their own worker thread (MQTT's callback thread only decodes and enqueues),
one at a time, so two profiles never disturb each other's timings.
"""

from __future__ import annotations

import logging
import queue
import statistics
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from node_engine.artifacts import ArtifactError, DownloadCancelled, fetch_artifact
from node_engine.onnx_nodes import graph_nodes
from node_engine.runtime import profile_model
from treeline_common.clock import Clock
from treeline_common.messages import PayloadError, ProfileCommand, ProfileResult, decode

log = logging.getLogger(__name__)

KERNEL_SUFFIX = "_kernel_time"
# Suffixes onnxruntime appends to the name of a kernel it rewrote from a node.
REWRITE_SUFFIXES = ("_nchwc",)

Profiler = Callable[..., Any]  # runtime.profile_model(path, runs=, warmup=, threads=) -> ProfileTrace
Publisher = Callable[[ProfileResult], None]


class KernelNamer:
    """Maps ORT kernel names back to ONNX node names of the original model."""

    def __init__(self, node_names: Iterable[str], producers: Mapping[str, str]) -> None:
        self.node_names = set(node_names)
        self.producers = dict(producers)

    @classmethod
    def from_model_file(cls, path: str | Path) -> KernelNamer:
        """Node names as :func:`ml_scheduler.graph.analyze_model` names them (``op_type_index``
        for unnamed nodes), and the producing node of every tensor. Read without the ``onnx``
        package (:mod:`node_engine.onnx_nodes`): a device install does not have it."""
        names: list[str] = []
        producers: dict[str, str] = {}
        used: set[str] = set()
        for idx, node in enumerate(graph_nodes(path)):
            name = node.name or f"{node.op_type}_{idx}"
            if name in used:
                name = f"{name}_{idx}"
            used.add(name)
            names.append(name)
            for out in node.outputs:
                if out:
                    producers[out] = name
        return cls(names, producers)

    def node_of(self, kernel: str) -> str | None:
        """The ONNX node a kernel (name without ``_kernel_time``) runs, or None for ORT's own."""
        if kernel in self.node_names:
            return kernel
        for suffix in REWRITE_SUFFIXES:
            if kernel.endswith(suffix):
                base = kernel[: -len(suffix)]
                if base in self.node_names:
                    return base
                if base in self.producers:
                    return self.producers[base]
        return self.producers.get(kernel)


def split_runs(events: Sequence[Mapping[str, Any]]) -> list[list[tuple[str, float]]]:
    """Kernel ``(name, µs)`` per ``model_run``, in run order and, within a run, in start order."""
    runs = sorted((float(e.get("ts", 0)), float(e.get("ts", 0)) + float(e.get("dur", 0)))
                  for e in events if e.get("cat") == "Session" and e.get("name") == "model_run")
    kernels = sorted((float(e.get("ts", 0)), str(e["name"])[: -len(KERNEL_SUFFIX)], float(e.get("dur", 0)))
                     for e in events
                     if e.get("cat") == "Node" and str(e.get("name", "")).endswith(KERNEL_SUFFIX))
    out: list[list[tuple[str, float]]] = [[] for _ in runs]
    r = 0
    for ts, name, dur in kernels:
        while r < len(runs) and ts > runs[r][1]:
            r += 1
        if r == len(runs):
            break
        if ts >= runs[r][0]:
            out[r].append((name, dur))
    return out


def run_op_ms(kernels: Sequence[tuple[str, float]], namer: KernelNamer) -> dict[str, float]:
    """ms per ONNX node in one run; ORT-inserted kernels go to the previous (else next) node."""
    times: dict[str, float] = {}
    previous: str | None = None
    pending = 0.0
    for kernel, dur_us in kernels:
        node = namer.node_of(kernel)
        ms = dur_us / 1000.0
        if node is None:
            if previous is None:
                pending += ms
            else:
                times[previous] += ms
            continue
        times[node] = times.get(node, 0.0) + ms + pending
        pending, previous = 0.0, node
    return times


def parse_trace(events: Sequence[Mapping[str, Any]], namer: KernelNamer, warmup: int = 0) -> dict[str, float]:
    """Median ms per ONNX node over the runs after the first ``warmup`` ones."""
    per_run = [run_op_ms(kernels, namer) for kernels in split_runs(events)[max(0, warmup):]]
    names = sorted({name for run in per_run for name in run})
    return {name: statistics.median(run[name] for run in per_run if name in run) for name in names}


def emulation_factor(speed_factor: float) -> float:
    """How much longer an emulated device takes than this host (1.0 for native nodes)."""
    return 1.0 / speed_factor if 0.0 < speed_factor < 1.0 else 1.0


def profile_file(path: Path, cmd: ProfileCommand, *, threads: int, speed_factor: float,
                 profiler: Profiler) -> tuple[dict[str, float], float, int]:
    """``(op_ms, total_ms, runs)`` of the model at ``path`` (emulation scaling applied)."""
    namer = KernelNamer.from_model_file(path)
    runs = max(1, cmd.runs)
    warmup = max(0, cmd.warmup)
    trace = profiler(path, runs=runs, warmup=warmup, threads=threads)
    factor = emulation_factor(speed_factor)
    op_ms = {name: ms * factor for name, ms in parse_trace(trace.events, namer, warmup).items()}
    total = statistics.median(trace.run_ms[warmup:] or trace.run_ms) * factor
    return op_ms, total, runs


class ProfileWorker:
    """Decodes ``ProfileCommand``s on the MQTT thread; profiles and answers on its own thread."""

    def __init__(self, node_id: str, device_class: str, data_dir: Path, publish: Publisher, clock: Clock,
                 stop: threading.Event, *, threads: int = 0, speed_factor: float = 1.0,
                 profiler: Profiler | None = None, join_token: str | None = None) -> None:
        """``join_token``: sent on the model download (the cluster asks for it when it has join tokens)."""
        self._node_id = node_id
        self._device_class = device_class
        self._data_dir = data_dir
        self._publish = publish
        self._clock = clock
        self._stop = stop
        self._threads = threads
        self._speed_factor = speed_factor
        self._profiler = profiler
        self._join_token = join_token
        self._queue: queue.Queue[ProfileCommand | None] = queue.Queue()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="profiler", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 0.5) -> None:
        self._queue.put(None)
        if self._thread is not None:
            self._thread.join(timeout)

    def on_profile(self, payload: bytes) -> None:
        """MQTT handler: decode and enqueue (never blocks paho's thread)."""
        try:
            self._queue.put(decode(ProfileCommand, payload))
        except PayloadError as exc:
            log.warning("dropping bad ProfileCommand payload: %s", exc)

    def _run(self) -> None:
        while not self._stop.is_set():
            cmd = self._queue.get()
            if cmd is None:
                return
            result = self.handle(cmd)
            if result is not None:
                self._publish(result)

    def handle(self, cmd: ProfileCommand) -> ProfileResult | None:
        """Profile synchronously; None only when the node is shutting down."""
        log.info("profiling model %s (%d runs, %d warmup)", cmd.sha256[:12], cmd.runs, cmd.warmup)
        try:
            path = fetch_artifact(cmd.artifact_url, cmd.sha256, self._data_dir, stop=self._stop,
                                  token=self._join_token)
            profiler = self._profiler if self._profiler is not None else profile_model
            op_ms, total, runs = profile_file(path, cmd, threads=self._threads,
                                              speed_factor=self._speed_factor, profiler=profiler)
        except DownloadCancelled:
            return None
        except ArtifactError as exc:
            return self._result(cmd, error=str(exc))
        except Exception as exc:
            log.exception("profiling %s failed", cmd.sha256[:12])
            return self._result(cmd, error=f"profiling failed: {exc}")
        log.info("profiled %s: %d ops, %.2f ms per run", cmd.sha256[:12], len(op_ms), total)
        return self._result(cmd, op_ms=op_ms, total_ms=total, runs=runs)

    def _result(self, cmd: ProfileCommand, *, op_ms: dict[str, float] | None = None, total_ms: float = 0.0,
                runs: int = 0, error: str = "") -> ProfileResult:
        return ProfileResult(node_id=self._node_id, request_id=cmd.request_id, sha256=cmd.sha256.lower(),
                             device_class=self._device_class, op_ms=op_ms or {}, total_ms=total_ms, runs=runs,
                             error=error, ts=self._clock.now())
