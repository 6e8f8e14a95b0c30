"""The partition runtime: the one module of the node engine that imports onnxruntime.

A :class:`PartitionSession` wraps one ``InferenceSession`` and knows its input and output
names, so the data plane can feed it by name and forward its outputs by name. Sessions are
safe to run from several threads at once (onnxruntime's ``run`` is thread-safe and releases
the GIL), which is what lets a node keep several requests in flight per stage.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

log = logging.getLogger(__name__)


def session_options(threads: int = 0) -> ort.SessionOptions:
    """The options every partition session is made with (serving and profiling alike).

    ``threads`` > 0 caps the intra-op threads (0: onnxruntime's default, one per core).
    Intra-op threads do NOT spin after a run: spinning threads keep their cores busy for a
    while after every ``run``, exactly when the node's own threads (the data plane's poll
    thread sending the answer, other stages' sessions) need them. On a loaded 2-core host
    MobileNetV2 took 10.6 ms p50 with spinning and 6.0 ms without, and 14.5 ms against 6.0 ms
    when run from a worker thread as the data plane does (``python -m benchmarks.serving``).
    """
    options = ort.SessionOptions()
    if threads > 0:
        options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


class PartitionSession:
    """One loaded partition. Construction loads the model (the expensive part)."""

    def __init__(self, path: str | Path, threads: int = 0) -> None:
        self._session = ort.InferenceSession(str(path), sess_options=session_options(threads),
                                             providers=["CPUExecutionProvider"])
        self.input_names: tuple[str, ...] = tuple(i.name for i in self._session.get_inputs())
        self.output_names: tuple[str, ...] = tuple(o.name for o in self._session.get_outputs())

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the partition on the named inputs and return every output by name.

        Raises ``ValueError`` naming the missing inputs, so the caller gets a clear error
        reply instead of an onnxruntime traceback. Extra inputs are ignored.
        """
        missing = [name for name in self.input_names if name not in inputs]
        if missing:
            raise ValueError(f"missing inputs {missing}; the stage expects {list(self.input_names)}")
        feed = {name: inputs[name] for name in self.input_names}
        results = self._session.run(list(self.output_names), feed)
        return {name: np.asarray(value) for name, value in zip(self.output_names, results, strict=False)}

    def signature(self) -> dict[str, list[dict[str, Any]]]:
        """``{"inputs": [...], "outputs": [...]}``, each ``{name, dtype, shape}`` as onnxruntime
        declares them: dtype a numpy name (``float32``) or the ONNX type (``string``), shape a
        list of ints, dimension names or None (what the v2 metadata of :mod:`node_engine.v2_models`
        shows). Empty lists once the session is closed."""
        if self._session is None:
            return {"inputs": [], "outputs": []}

        def spec(arg: Any) -> dict[str, Any]:
            dtype = _ORT_DTYPES.get(arg.type)
            onnx_type = str(arg.type).removeprefix("tensor(").rstrip(")")
            name = np.dtype(dtype).name if dtype is not None else onnx_type
            return {"name": arg.name, "dtype": name, "shape": list(arg.shape)}

        return {"inputs": [spec(a) for a in self._session.get_inputs()],
                "outputs": [spec(a) for a in self._session.get_outputs()]}

    def close(self) -> None:
        """Drop the session so its memory can be freed (ORT has no explicit close)."""
        self._session = None


def load_partition(path: str | Path, threads: int = 0) -> PartitionSession:
    """Load ``path`` into a new session; onnxruntime errors propagate to the caller."""
    log.debug("loading partition %s (threads=%s)", path, threads)
    return PartitionSession(path, threads)


# ---------------------------------------------------------------- profiling (see node_engine.profiling)

_ORT_DTYPES = {
    "tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16,
    "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int8)": np.int8, "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}


@dataclass(frozen=True)
class ProfileTrace:
    """What one profiling session produced: ORT's trace events and the wall time of each run."""

    events: list[dict[str, Any]]
    run_ms: list[float]  # every run, warmup included, in order


def random_inputs(session: ort.InferenceSession, seed: int = 0) -> dict[str, np.ndarray]:
    """A random feed matching the declared inputs (symbolic dimensions taken as 1)."""
    rng = np.random.default_rng(seed)
    feed: dict[str, np.ndarray] = {}
    for spec in session.get_inputs():
        shape = [d if isinstance(d, int) and d > 0 else 1 for d in spec.shape]
        dtype = _ORT_DTYPES.get(spec.type, np.float32)
        if np.issubdtype(dtype, np.floating):
            feed[spec.name] = rng.standard_normal(shape).astype(dtype)
        else:
            feed[spec.name] = np.zeros(shape, dtype=dtype)
    return feed


def profile_model(path: str | Path, *, runs: int, warmup: int, threads: int = 0,
                  trace_dir: str | Path | None = None) -> ProfileTrace:
    """Run the model ``warmup + runs`` times with ORT's profiler on; return and delete its trace.

    The session is configured exactly like a serving :class:`PartitionSession` (same threads,
    same default graph optimisations), so the kernels timed are the kernels that serve.
    ``run_ms`` is NOT taken from that session: the profiler adds overhead to every kernel
    (about 15% on MobileNetV2 here), so the end-to-end times come from a second, identical
    session with the profiler off, and the cost model scales the per-op shares to them.
    """
    options = session_options(threads)
    options.enable_profiling = True
    if trace_dir is not None:
        directory = Path(trace_dir)
    else:
        directory = Path(tempfile.mkdtemp(prefix="treeline-profile-"))
    options.profile_file_prefix = str(directory / "ort_profile")
    session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    trace_file = ""
    try:
        feed = random_inputs(session)
        for _ in range(max(0, warmup) + max(1, runs)):
            session.run(None, feed)
    finally:
        trace_file = session.end_profiling()
    options.enable_profiling = False
    plain = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    run_ms: list[float] = []
    for _ in range(max(0, warmup) + max(1, runs)):
        start = time.perf_counter()
        plain.run(None, feed)
        run_ms.append((time.perf_counter() - start) * 1000.0)
    try:
        with open(trace_file, encoding="utf-8") as fh:
            events = json.load(fh)
    finally:
        Path(trace_file).unlink(missing_ok=True)
        if trace_dir is None:
            shutil.rmtree(directory, ignore_errors=True)
    return ProfileTrace(events if isinstance(events, list) else [], run_ms)
