"""Synthetic answers to ``ProfileCommand``: op times computed from FLOPs, never measured.

A real node runs the model under onnxruntime's profiler (:mod:`node_engine.profiling`); a
virtual node has no device to time, so it answers with times derived from the model itself:
the model is downloaded once per digest (from the command's ``artifact_url``, with the join
token, sha256 checked) and analysed with :func:`ml_scheduler.graph.analyze_model`; each op gets

    op_ms = flops / (REFERENCE_FLOPS_PER_MS * speed_factor) + OP_OVERHEAD_MS

keyed by the op names the cost model uses, ``total_ms`` their sum. SYNTHETIC: the figures
follow the FLOPs, not a device. Virtual nodes report device classes ``sim-<profile>``
(:data:`~node_engine.simulator.virtual_node.SIM_CLASS_PREFIX`), so these profiles, which the
cluster stores at the root like measured ones, are never mixed with real devices' profiles.

Commands are answered on one worker thread (the network threads only enqueue); a failed
download is answered with ``error`` set, as a real node does.
"""

from __future__ import annotations

import hashlib
import logging
import queue
import threading
from collections.abc import Callable

import onnx
import requests

from ml_scheduler.graph import ModelGraph, analyze_model
from treeline_common.messages import ProfileCommand, ProfileResult

log = logging.getLogger(__name__)

REFERENCE_FLOPS_PER_MS = 1.0e7  # 10 GFLOP/s at speed factor 1.0 (the "server" profile)
OP_OVERHEAD_MS = 0.01  # per op: launch overhead, so FLOP-free ops are not free

Answer = Callable[[str, ProfileResult], None]  # (node_id, result) -> publish it


def synthetic_op_ms(graph: ModelGraph, speed_factor: float) -> dict[str, float]:
    """Op times in ms for a device ``speed_factor`` times as fast as the reference (pure)."""
    rate = REFERENCE_FLOPS_PER_MS * max(speed_factor, 1e-6)
    return {op.name: round(op.flops / rate + OP_OVERHEAD_MS, 6) for op in graph.ops}


class SyntheticProfiler:
    """Answers profile commands of many virtual nodes; models are fetched once per digest."""

    def __init__(self, answer: Answer, now: Callable[[], float], join_token: str | None = None,
                 timeout: float = 30.0) -> None:
        self._answer = answer
        self._now = now
        self._token = join_token
        self._timeout = timeout
        self._graphs: dict[str, ModelGraph] = {}
        self._queue: queue.SimpleQueue[tuple[str, str, float, ProfileCommand] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="sim-profiler", daemon=True)
        self.answered = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 1.0) -> None:
        self._queue.put(None)
        if self._thread.is_alive():
            self._thread.join(timeout)

    def submit(self, node_id: str, device_class: str, speed_factor: float, cmd: ProfileCommand) -> None:
        """Queue one command (any thread)."""
        self._queue.put((node_id, device_class, speed_factor, cmd))

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            node_id, device_class, speed_factor, cmd = item
            try:
                result = self._profile(node_id, device_class, speed_factor, cmd)
            except Exception as exc:  # noqa: BLE001 - any failure is answered, as a real node does
                log.warning("synthetic profile of %s for %s failed: %s", cmd.sha256[:12], node_id, exc)
                result = ProfileResult(node_id, cmd.request_id, cmd.sha256, device_class,
                                       error=f"synthetic profile failed: {exc}", ts=self._now())
            self._answer(node_id, result)
            self.answered += 1

    def _profile(self, node_id: str, device_class: str, speed_factor: float,
                 cmd: ProfileCommand) -> ProfileResult:
        graph = self._graph(cmd)
        op_ms = synthetic_op_ms(graph, speed_factor)
        log.info("synthetic profile of %s for %s (%s): %d ops", cmd.sha256[:12], node_id, device_class,
                 len(op_ms))
        return ProfileResult(node_id, cmd.request_id, cmd.sha256, device_class, op_ms=op_ms,
                             total_ms=round(sum(op_ms.values()), 6), runs=cmd.runs, ts=self._now())

    def _graph(self, cmd: ProfileCommand) -> ModelGraph:
        digest = cmd.sha256.lower()
        graph = self._graphs.get(digest)
        if graph is None:
            headers = {"Authorization": f"Bearer {self._token}"} if self._token else None
            response = requests.get(cmd.artifact_url, headers=headers, timeout=self._timeout)
            response.raise_for_status()
            got = hashlib.sha256(response.content).hexdigest()
            if got != digest:
                raise ValueError(f"sha256 mismatch: expected {digest} got {got}")
            graph = analyze_model(onnx.load_model_from_string(response.content))
            self._graphs[digest] = graph
        return graph
