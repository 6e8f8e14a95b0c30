"""Random planning instances for property tests and benchmarks (seeded, deterministic).

Why: brute-force comparisons and timings need many instances that exercise everything the
cost model has: heterogeneous devices (speed 0.05-1.0, per-op affinity), memory limits that
sometimes bind, ops some devices cannot run, heterogeneous links (rtt 0.5-10 ms, 10-1000
Mbit/s), source/sink legs, pins and partition caps. ``n_types`` makes devices fall into
interchangeable classes (same profile *and* same links), the PipeEdge setting. Cut profiles are
either a random chain or derived from a random ONNX DAG (model_zoo.synthetic + analyze_model),
so skip connections shape the bytes crossing each cut.
"""

from __future__ import annotations

import numpy as np

from ml_scheduler.problem import PlanningProblem

MBIT_TO_BYTES_PER_MS = 1e6 / 8 / 1000


def _dag_profile(rng: np.random.Generator, n_ops: int) -> tuple[np.ndarray, ...]:
    """(work, param, live, cut) of the first ``n_ops`` ops of a random DAG model."""
    from ml_scheduler.graph import analyze_model
    from model_zoo.synthetic import random_dag_model

    graph = analyze_model(random_dag_model(n_ops, seed=int(rng.integers(2**31)), skip_prob=0.4))
    ops = graph.ops[:n_ops]
    scale = float(rng.uniform(1e3, 3e4))  # the zoo's [1, 8] tensors are tiny: scale to real sizes
    cut = np.array([graph.cut_bytes(p) for p in range(n_ops + 1)], dtype=np.float64) * scale
    work = np.array([op.flops for op in ops], dtype=np.float64)
    work = (work + work.mean() + 1.0) / (work.mean() + 1.0) * rng.uniform(0.2, 2.0, n_ops)
    param = np.array([op.param_bytes for op in ops], dtype=np.float64) * scale
    live = np.round(cut[:-1] + np.array([op.output_bytes for op in ops]) * scale)
    return work, np.round(param), live, np.round(cut)


def _chain_profile(rng: np.random.Generator, n_ops: int) -> tuple[np.ndarray, ...]:
    work = rng.lognormal(0.0, 0.8, n_ops)
    param = np.round(rng.lognormal(11.0, 1.5, n_ops))
    cut = np.round(rng.lognormal(11.0, 1.5, n_ops + 1))
    live = np.round(np.maximum(cut[:-1], cut[1:]) * rng.uniform(1.0, 3.0, n_ops))
    return work, param, live, cut


def random_problem(
    rng: np.random.Generator,
    n_ops: int,
    n_devices: int,
    n_types: int | None = None,
    objective: str = "latency",
    with_memory: bool = True,
    with_source: bool = True,
    max_partitions: int | None = None,
    *,
    shape: str = "random",
    with_pin: bool | None = None,
    with_sink: bool | None = None,
    with_inf: bool | None = None,
) -> PlanningProblem:
    """A random instance. ``None`` flags are drawn at random; ``shape`` is chain, dag or random."""
    if shape == "random":
        shape = "dag" if rng.random() < 0.5 else "chain"
    work, param, live, cut = (_dag_profile if shape == "dag" else _chain_profile)(rng, n_ops)
    n_types = n_devices if n_types is None else max(1, min(n_types, n_devices))
    type_of = np.arange(n_devices) % n_types if n_types == n_devices else np.sort(
        np.concatenate([np.arange(n_types), rng.integers(0, n_types, n_devices - n_types)]))
    speed = rng.uniform(0.05, 1.0, n_types)
    affinity = rng.uniform(0.6, 1.6, (n_types, n_ops))
    op_ms = (work[None, :] * affinity / speed[:, None])[type_of]
    if with_inf if with_inf is not None else rng.random() < 0.2:
        holes = rng.random((n_types, n_ops)) < 0.05
        op_ms = np.where(holes[type_of], np.inf, op_ms)
    need = param.sum() + live.max()
    mem_type = np.full(n_types, np.inf)
    if with_memory:
        limited = rng.random(n_types) < 0.7
        mem_type = np.where(limited, np.round(need * rng.uniform(0.25, 1.2, n_types)), np.inf)
    rtt_type = rng.uniform(0.5, 10.0, (n_types, n_types))
    rtt_type = (rtt_type + rtt_type.T) / 2 if rng.random() < 0.5 else rtt_type
    bw_type = rng.uniform(10.0, 1000.0, (n_types, n_types)) * MBIT_TO_BYTES_PER_MS
    rtt = rtt_type[np.ix_(type_of, type_of)]
    bandwidth = bw_type[np.ix_(type_of, type_of)]
    # Intra-type links must be symmetric for the class to be interchangeable.
    for t in range(n_types):
        same = np.flatnonzero(type_of == t)
        rtt[np.ix_(same, same)] = rtt_type[t, t]
        bandwidth[np.ix_(same, same)] = bw_type[t, t]
    source = int(rng.integers(n_devices)) if with_source else None
    sink_on = with_sink if with_sink is not None else rng.random() < 0.5
    sink = (source if source is not None and rng.random() < 0.5 else int(rng.integers(n_devices))) \
        if sink_on else None
    pin_on = with_pin if with_pin is not None else rng.random() < 0.3
    first = (source if source is not None else int(rng.integers(n_devices))) if pin_on else None
    k = max_partitions if max_partitions is not None else int(rng.integers(1, n_devices + 1))
    power = rng.uniform(2.0, 30.0, n_types)[type_of]
    radio = rng.uniform(5.0, 100.0, n_types)[type_of]
    return PlanningProblem(
        op_ms=op_ms, param_bytes=param, live_bytes=live, cut_bytes=cut, mem_bytes=mem_type[type_of],
        rtt_ms=rtt, bandwidth=bandwidth, device_ids=tuple(f"dev{d}" for d in range(n_devices)),
        source=source, sink=sink, max_partitions=k, first_device=first, objective=objective,
        power_w=power, radio_nj_per_byte=radio,
    )
