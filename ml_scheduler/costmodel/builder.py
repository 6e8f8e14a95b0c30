"""From a graph, the shortlisted devices and a cost model to a :class:`PlanningProblem`.

Why here: every planner reads the same matrix and vectors, so the one place that turns device
figures into costs must agree with what the node engines emulate (docs/contracts.md,
"Scheduler v2 additions"): the link ``d -> e`` costs the *sender's* ``link_rtt_ms`` plus bytes
over the sender's ``uplink_mbps * 125`` bytes per ms, or ``d``'s measured link to ``e`` where it
has one (:mod:`ml_scheduler.costmodel.links`); memory limits are MiB (None: unlimited).

Also the helpers the benchmarks and the scheduler's explanation use to compare predictions
with measurements: :func:`stage_times` and :func:`prediction_error`. Pure: numpy only.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import numpy as np

from ml_scheduler.costmodel.links import link_matrices
from ml_scheduler.costmodel.model import CostModel
from ml_scheduler.graph import ModelGraph
from ml_scheduler.problem import OBJECTIVES, PlanningProblem
from treeline_common.profiles import LOAD_MEMORY_FACTOR

MIB = 1024 * 1024
# NodeView fields added by scheduler v2, with the defaults of treeline_common.profiles.DeviceProfile.
DEVICE_DEFAULTS: dict[str, Any] = {"power_w": 10.0, "radio_nj_per_byte": 20.0, "uplink_mbps": 1000.0,
                                   "link_rtt_ms": 0.5, "device_class": ""}


def _figure(node: Any, name: str) -> Any:
    value = getattr(node, name, None)
    return DEVICE_DEFAULTS[name] if value is None else value


def device_class_of(node: Any) -> str:
    """The class a node's profiles are stored under (falls back to its profile name)."""
    return str(_figure(node, "device_class") or getattr(node, "profile", "") or "")


def build_problem(
    graph: ModelGraph,
    devices: Sequence[Any],
    cost_model: CostModel,
    *,
    source_idx: int | None = None,
    sink_idx: int | None = None,
    max_partitions: int = 1,
    first_device: int | None = None,
    objective: str = "latency",
) -> PlanningProblem:
    """The planning problem over ``devices`` (``NodeView``-like, in shortlist order).

    ``cut_bytes[p]`` is ``graph.cut_bytes(p)`` for ``p`` in ``0..n`` (0: the graph inputs,
    n: the graph outputs); ``live_bytes[i]`` is the cut before op ``i`` plus its outputs.
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r}; known: {', '.join(OBJECTIVES)}")
    if not devices:
        raise ValueError("build_problem needs at least one device")
    n = len(graph.ops)
    classes = [device_class_of(d) for d in devices]
    cost_model = cost_model.with_speed_factors(
        {c: float(d.speed_factor) for c, d in zip(classes, devices, strict=True) if c})
    op_ms = np.vstack([cost_model.op_ms(graph, c, float(d.speed_factor))[0]
                       for c, d in zip(classes, devices, strict=True)])
    # a node admits a stage only if LOAD_MEMORY_FACTOR x its weights fit (node_engine/refusals.py):
    # charged alike here, so the planner never chooses a stage its node would refuse
    param_bytes = np.array([op.param_bytes for op in graph.ops], dtype=float) * LOAD_MEMORY_FACTOR
    cut_bytes = np.array([np.inf if p in graph.uncuttable else graph.cut_bytes(p) for p in range(n + 1)],
                         dtype=float)  # an uncuttable position costs an infinite transfer: never chosen
    live_bytes = np.array([graph.cut_bytes(i) + op.output_bytes for i, op in enumerate(graph.ops)],
                          dtype=float)
    mem_bytes = np.array([np.inf if d.memory_limit_mb is None else float(d.memory_limit_mb) * MIB
                          for d in devices])
    rtt, bandwidth = link_matrices(devices, np.array([float(_figure(d, "uplink_mbps")) for d in devices]),
                                   np.array([float(_figure(d, "link_rtt_ms")) for d in devices]))
    return PlanningProblem(
        op_ms=op_ms,
        param_bytes=param_bytes,
        live_bytes=live_bytes,
        cut_bytes=cut_bytes,
        mem_bytes=mem_bytes,
        rtt_ms=rtt,
        bandwidth=bandwidth,
        device_ids=tuple(str(d.node_id) for d in devices),
        source=source_idx,
        sink=sink_idx,
        max_partitions=int(max_partitions),
        first_device=first_device,
        objective=objective,
        power_w=np.array([float(_figure(d, "power_w")) for d in devices]),
        radio_nj_per_byte=np.array([float(_figure(d, "radio_nj_per_byte")) for d in devices]),
    )


def stage_times(costs: PlanningProblem | np.ndarray | Sequence[float], positions: Sequence[int],
                devices: Sequence[int] | None = None) -> np.ndarray:
    """Predicted compute ms per stage for interior cut ``positions``.

    ``costs`` is a problem or an ``(m, n)`` matrix (then ``devices[j]`` picks stage j's row;
    without ``devices`` a one-row matrix is used for every stage) or a ``(n,)`` vector.
    """
    matrix = costs.op_ms if isinstance(costs, PlanningProblem) else np.asarray(costs, dtype=float)
    if matrix.ndim == 1:
        matrix = matrix[None, :]
    n = matrix.shape[1]
    bounds = [0, *positions, n]
    if any(b <= a for a, b in itertools.pairwise(bounds)):
        raise ValueError(f"positions must be strictly increasing within 1..{n - 1}: {list(positions)}")
    rows = list(devices) if devices is not None else [0] * (len(bounds) - 1)
    if len(rows) != len(bounds) - 1:
        raise ValueError(f"{len(bounds) - 1} stages but {len(rows)} devices")
    stages = zip(rows, itertools.pairwise(bounds), strict=True)
    return np.array([matrix[d, a:b].sum() for d, (a, b) in stages])


def prediction_error(predicted: Sequence[float] | np.ndarray,
                     measured: Sequence[float] | np.ndarray) -> np.ndarray:
    """Relative errors ``|predicted - measured| / measured`` elementwise (inf where measured is 0)."""
    p = np.asarray(predicted, dtype=float)
    m = np.asarray(measured, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(m > 0, np.abs(p - m) / np.where(m > 0, m, 1.0), np.inf)
