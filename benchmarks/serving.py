"""Serving overhead of the data plane: whole model, extra stages and pipelines, on loopback.

Run ``python -m benchmarks.serving [--quick] [--json PATH]`` (its figures are also part of
``python -m benchmarks.dataplane``). Every server here is the real
:class:`~node_engine.data_plane.server.DataPlaneServer` with the real
:class:`~node_engine.stages.StageRunner` (its poll thread and workers, as a node engine runs
them), reached by a real :class:`~node_engine.data_plane.client.TensorClient` over loopback
TCP; a node is a spawned process of its own where that is said, else threads of this
process. Goals in brackets.

- ``serving_overhead_ratio`` [<= 1.10]: the whole MobileNetV2 (``model_zoo``, input
  1x3x224x224 float32) served by one node in a process of its own (the caller, this
  process, elsewhere, as in real serving), request in and answer out, p50, over the p50 of
  ``PartitionSession.run`` in this process on a session made the same way (same options,
  :func:`node_engine.runtime.session_options`). Raw and served requests alternate one by one
  so the host's load hits both alike. ``serving_dataplane_p50_ms`` is the data plane's own
  share, measured alongside: the same request and answer sizes through the same node, to a
  stage that computes nothing (so it runs on the node's poll thread, see
  :class:`node_engine.data_plane.workers.InlinePolicy`: the model's request also pays the
  hand-off to a worker and back). ``serving_overhead_ms`` is the difference of the p50s. The
  ``*_in_process`` figures are the same with the node's threads in this process, serving the
  very session the raw runs use.
- ``hop_overhead_ms`` [<= 0.3]: p50 added by each extra stage on another node for a 100 KB
  float32 tensor: chains of 1..4 nodes (every stage but the last passes the tensor on, the
  last answers its sum, one request in flight), the least-squares slope of p50 over the
  number of stages. ``chain_<k>_p50_ms`` are the points. These stages take microseconds, so
  they run on each node's poll thread (no worker hand-off); a stage that computes for real
  adds the hand-off too. ``local_hop_overhead_ms`` is the
  same slope with every stage on ONE node, where the next stage gets the arrays in-process
  (no socket, no serialisation, no copy).
- ``pipeline_efficiency_k<k>`` [>= 0.90] for k = 2, 3, 4: k emulated equal devices, each a
  process of its own serving one stage with one worker (as an emulated node engine runs),
  each stage one real elementwise pass over a 100 KB tensor and then the rest of
  ``STAGE_MS`` waited out (see :class:`_Device` for why a fixed time), fed by one client
  keeping ``2k`` requests in flight: measured requests/s over the planner's throughput bound
  ``1000 / bottleneck_ms`` (``ml_scheduler.problem``; equal stages on loopback, no link
  term: the bottleneck is one stage's time), the stage time measured on one device alone,
  one request at a time, in the same run (``pipeline_stage_ms``, mean).
  ``pipeline_stage_ms_k<k>`` is the slowest stage's mean time the devices reported while
  pipelined: when it exceeds ``pipeline_stage_ms`` the host, not the data plane, slowed
  the devices down.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

import model_zoo
from benchmarks.report import add_json_option, benchmark_parser, report
from node_engine.data_plane.client import TensorClient
from node_engine.data_plane.server import DataPlaneServer
from node_engine.runtime import PartitionSession
from node_engine.stages import LoadedStage, Session, StageRunner, StageTable
from treeline_common.messages import NextStage

TENSOR_VALUES = 25_600  # 100 KB of float32
SERVING_GOAL = 1.10
HOP_GOAL_MS = 0.3
EFFICIENCY_GOAL = 0.90
STAGE_MS = 8.0  # target emulated stage time of the pipeline benchmark
PIPELINE_KS = (2, 3, 4)
START_TIMEOUT_S = 30.0


class PassStage:
    """A stage that sends its input on unchanged (a real partition would compute)."""

    input_names: tuple[str, ...] = ("x",)
    output_names: tuple[str, ...] = ("x",)

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"x": inputs["x"]}

    def close(self) -> None:
        pass


class _Sum(PassStage):
    """A last stage whose answer is small (the sum), so the reply costs next to nothing."""

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"x": np.asarray(inputs["x"].sum(), dtype=np.float32)}


class _Device(PassStage):
    """An emulated device of fixed speed: one real elementwise pass over the 100 KB tensor, then
    the rest of ``stage_ms`` waited out (an accelerator computing while the host CPU is free).

    A fixed stage time rather than the emulator's proportional slowdown: that slowdown multiplies
    whatever the real compute took, host contention included (by 1/speed, 10-25x for stages of
    a few ms here), so on a small shared host it measures the host's load, not the data plane.
    """

    def __init__(self, seed: int, stage_ms: float) -> None:
        self._weight = np.random.default_rng(seed).standard_normal(TENSOR_VALUES).astype(np.float32)
        self._stage_s = stage_ms / 1000.0
        self._busy = threading.Event()  # never set: waited on for the emulated rest of the stage

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        started = time.perf_counter()
        x = np.tanh(inputs["x"] * self._weight)
        self._busy.wait(max(0.0, self._stage_s - (time.perf_counter() - started)))
        return {"x": x}


class _Constant(PassStage):
    """Answers a fixed ``shape`` of zeros whatever it gets: the data plane's own share of a request."""

    def __init__(self, input_name: str, shape: tuple[int, ...]) -> None:
        self.input_names = (input_name,)
        self._answer = {"y": np.zeros(shape, dtype=np.float32)}

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self._answer


def _stage(key: str, session: Session, nxt: NextStage | None = None) -> LoadedStage:
    deployment, generation, index = key.split("/")
    return LoadedStage(key, deployment, int(index), "x", int(generation), session, nxt)


@contextmanager
def _server(stages: Sequence[LoadedStage], runner: StageRunner | None = None,
            workers: int = 2) -> Iterator[DataPlaneServer]:
    table = StageTable()
    for stage in stages:
        table.put(stage)
    server = DataPlaneServer(table, runner or StageRunner(), workers=workers)
    server.start()
    try:
        yield server
    finally:
        server.close()


def _p50_ms(samples: Sequence[float]) -> float:
    return float(statistics.median(samples))


def _timed(call: Any, n: int) -> list[float]:
    samples = []
    for _ in range(n):
        started = time.perf_counter()
        call()
        samples.append((time.perf_counter() - started) * 1000.0)
    return samples


# ---------------------------------------------------------------- whole model, one node

MODEL_KEY, SIZES_KEY = "serve/1/0", "sizes/1/0"


def _model_input(session: PartitionSession) -> dict[str, np.ndarray]:
    x = np.random.default_rng(0).random((1, 3, 224, 224), dtype=np.float32)
    return {session.input_names[0]: x}


def _model_stages(session: PartitionSession) -> list[LoadedStage]:
    """The whole model, and a stage that answers the same shape computing nothing."""
    answer_shape = session.run(_model_input(session))[session.output_names[0]].shape
    return [_stage(MODEL_KEY, session), _stage(SIZES_KEY, _Constant(session.input_names[0], answer_shape))]


def serving_overhead(model_path: Path, n: int, warmup: int, *, own_process: bool) -> dict[str, float]:
    """MobileNetV2 through one node vs ``session.run`` on a session with the same options, alternating.

    ``own_process``: the node is a process of its own (as a node engine runs, the caller
    elsewhere) and the raw runs use a second session made the same way in this process;
    else the node's threads run in this process, on the very session the raw runs use.
    """
    session = PartitionSession(model_path)
    feed = _model_input(session)
    raw: list[float] = []
    served: list[float] = []
    data_plane: list[float] = []
    with ExitStack() as stack:
        if own_process:
            endpoint = stack.enter_context(_node_process(_serve_model, model_path))
        else:
            endpoint = stack.enter_context(_server(_model_stages(session))).endpoint
        client = stack.enter_context(TensorClient(endpoint))

        def direct() -> None:
            session.run(feed)

        def through_node() -> None:
            client.infer(MODEL_KEY, feed)

        def sizes_only() -> None:
            client.infer(SIZES_KEY, feed)

        for call in (direct, through_node, sizes_only):
            _timed(call, warmup)
        for _ in range(n):  # alternate request by request: the host's load hits all alike
            raw.extend(_timed(direct, 1))
            served.extend(_timed(through_node, 1))
            data_plane.extend(_timed(sizes_only, 1))
    raw_p50, served_p50 = _p50_ms(raw), _p50_ms(served)
    return {"raw_p50_ms": raw_p50, "node_p50_ms": served_p50, "dataplane_p50_ms": _p50_ms(data_plane),
            "overhead_ms": served_p50 - raw_p50, "overhead_ratio": served_p50 / raw_p50}


# ---------------------------------------------------------------- extra stages

def _chain_stages(k: int, prefix: str) -> list[str]:
    return [f"{prefix}{k}/1/{i}" for i in range(k)]


def _remote_chain(stack: ExitStack, k: int) -> tuple[str, str]:
    """k nodes, one stage each; returns (entry endpoint, entry stage key)."""
    keys = _chain_stages(k, "remote")
    nxt: NextStage | None = None
    endpoint = ""
    for i in reversed(range(k)):
        session: Session = _Sum() if i == k - 1 else PassStage()
        server = stack.enter_context(_server([_stage(keys[i], session, nxt)]))
        endpoint = server.endpoint
        nxt = NextStage(f"n{i}", endpoint, keys[i])
    return endpoint, keys[0]


def _local_chain(stack: ExitStack, k: int) -> tuple[str, str]:
    """One node serving all k stages, each routed to the next on the same node."""
    keys = _chain_stages(k, "local")
    table = StageTable()
    server = DataPlaneServer(table, StageRunner())
    endpoint = server.start()  # the routes name the node's own endpoint: known once it is bound
    stack.callback(server.close)
    for i in range(k):
        nxt = NextStage("self", endpoint, keys[i + 1]) if i < k - 1 else None
        table.put(_stage(keys[i], _Sum() if i == k - 1 else PassStage(), nxt))
    return endpoint, keys[0]


def _slope(xs: Sequence[int], ys: Sequence[float]) -> float:
    return float(np.polyfit(np.asarray(xs, dtype=float), np.asarray(ys, dtype=float), 1)[0])


def extra_stages(n: int, rounds: int, warmup: int) -> dict[str, float]:
    """p50 of chains of 1..4 stages, on separate nodes and on one node; the per-stage slopes."""
    x = np.random.default_rng(1).standard_normal(TENSOR_VALUES).astype(np.float32)
    ks = (1, 2, 3, 4)
    result: dict[str, float] = {}
    with ExitStack() as stack:
        calls = {}
        for where, build in (("chain", _remote_chain), ("local_chain", _local_chain)):
            for k in ks:
                endpoint, key = build(stack, k)
                client = stack.enter_context(TensorClient(endpoint))
                calls[f"{where}_{k}"] = (lambda c=client, s=key: c.infer(s, {"x": x}))
        samples: dict[str, list[float]] = {name: [] for name in calls}
        for call in calls.values():
            _timed(call, warmup)
        per_round = max(1, n // rounds)
        for _ in range(rounds):
            for name, call in calls.items():
                samples[name].extend(_timed(call, per_round))
    for name, values in samples.items():
        result[f"{name}_p50_ms"] = _p50_ms(values)
    result["hop_overhead_ms"] = _slope(ks, [result[f"chain_{k}_p50_ms"] for k in ks])
    result["local_hop_overhead_ms"] = _slope(ks, [result[f"local_chain_{k}_p50_ms"] for k in ks])
    result["hop_goal_met"] = result["hop_overhead_ms"] <= HOP_GOAL_MS
    return result


# ---------------------------------------------------------------- pipelines of emulated devices

def _serve_device(conn: Connection, key: str, nxt: NextStage | None, seed: int) -> None:
    """Child process: one emulated device (one worker) serving ``key`` (see :func:`_node_process`)."""
    _serve_until_closed(conn, [_stage(key, _Device(seed, STAGE_MS), nxt)], workers=1)


def _serve_model(conn: Connection, model_path: Path) -> None:
    """Child process: a node serving the whole model at ``MODEL_KEY`` and its :class:`_Constant` twin
    at ``SIZES_KEY`` (see :func:`_node_process`)."""
    session = PartitionSession(model_path)
    _serve_until_closed(conn, _model_stages(session))


def _serve_until_closed(conn: Connection, stages: Sequence[LoadedStage], workers: int = 2) -> None:
    """Serve ``stages``, send the endpoint on ``conn``, serve until the parent closes it."""
    with _server(stages, workers=workers) as server:
        conn.send(server.endpoint)
        with contextlib.suppress(EOFError):
            conn.recv()


@contextmanager
def _node_process(target: Callable[..., None], *args: Any) -> Iterator[str]:
    """``target(conn, *args)`` in a process of its own (as a node engine runs); yields its endpoint."""
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    process = ctx.Process(target=target, args=(child, *args), daemon=True)
    process.start()
    try:
        if not parent.poll(START_TIMEOUT_S):
            raise RuntimeError(f"{target.__name__} did not start within {START_TIMEOUT_S}s")
        yield str(parent.recv())
    finally:
        parent.close()
        process.join(5.0)
        if process.is_alive():
            process.kill()
            process.join()


def pipeline_efficiency(requests: int) -> dict[str, float]:
    """Throughput of k emulated equal devices against the planner's bound, k in PIPELINE_KS."""
    x = np.random.default_rng(2).standard_normal(TENSOR_VALUES).astype(np.float32)
    result: dict[str, float] = {}
    with ExitStack() as stack:  # one device alone, one request at a time: the planner's stage time
        key = "alone/1/0"
        endpoint = stack.enter_context(_node_process(_serve_device, key, None, 0))
        client = stack.enter_context(TensorClient(endpoint))
        _timed(lambda: client.infer(key, {"x": x}), 20)
        stage_ms = statistics.fmean(client.infer(key, {"x": x})[1][key] for _ in range(50))
    result["pipeline_stage_ms"] = stage_ms
    bound_rps = 1000.0 / stage_ms  # ml_scheduler.problem: throughput = 1000 / bottleneck_ms
    for k in PIPELINE_KS:
        keys = _chain_stages(k, "pipe")
        with ExitStack() as stack:
            nxt: NextStage | None = None
            endpoint = ""
            for i in reversed(range(k)):  # one process per emulated device, as node engines run
                endpoint = stack.enter_context(_node_process(_serve_device, keys[i], nxt, i))
                nxt = NextStage(f"n{i}", endpoint, keys[i])
            client = stack.enter_context(TensorClient(endpoint))
            client.infer_many(keys[0], [{"x": x}] * (4 * k), max_in_flight=2 * k)  # warm up
            started = time.perf_counter()
            answers = client.infer_many(keys[0], [{"x": x}] * requests, max_in_flight=2 * k)
            rps = requests / (time.perf_counter() - started)
        # the stage times the devices reported while pipelined (contention on this host shows here)
        result[f"pipeline_stage_ms_k{k}"] = max(statistics.fmean(timings[key] for _, timings, _ in answers)
                                               for key in keys)
        result[f"pipeline_rps_k{k}"] = rps
        result[f"pipeline_efficiency_k{k}"] = rps / bound_rps
    result["pipeline_bound_rps"] = bound_rps
    efficiencies = [result[f"pipeline_efficiency_k{k}"] for k in PIPELINE_KS]
    result["pipeline_goal_met"] = min(efficiencies) >= EFFICIENCY_GOAL
    return result


def run(quick: bool) -> dict[str, Any]:
    """Every figure of the module docstring."""
    cache = Path(os.environ.get("TREELINE_MODEL_CACHE", Path(tempfile.gettempdir()) / "treeline-models"))
    model_zoo.cached_onnx("mobilenet_v2", cache)
    n, rounds, warmup = (200, 5, 20) if quick else (1000, 10, 50)
    result: dict[str, Any] = {}
    model = cache / "mobilenet_v2.onnx"
    for own_process, suffix in ((True, ""), (False, "_in_process")):
        figures = serving_overhead(model, n // 2, warmup, own_process=own_process)
        result.update({f"serving_{name}{suffix}": value for name, value in figures.items()})
    result["serving_goal_met"] = result["serving_overhead_ratio"] <= SERVING_GOAL
    result.update(extra_stages(n, rounds, warmup))
    result.update(pipeline_efficiency(150 if quick else 600))
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = benchmark_parser(__doc__, "fewer requests (about 12 s)")
    add_json_option(parser, "serving")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    report(run(args.quick), args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
