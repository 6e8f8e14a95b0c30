"""The planning problem and the one definition of what a plan costs.

Every planner (latency DP, throughput DP, brute force, DADS min-cut, the AMP4EC-style greedy
baseline) works on a :class:`PlanningProblem` and is judged by :func:`evaluate`, so "optimal"
means the same thing everywhere and the optimality gap is measurable.

A plan cuts the op order ``0..n`` at increasing positions into contiguous ranges
``[p_j, p_{j+1})`` and runs range ``j`` on device ``d_j``; a device holds at most one range.
Costs (all in ms, bytes, mJ):

- compute of a range on ``d``: ``sum(op_ms[d, a:b])``;
- transfer of ``x`` bytes from ``d`` to ``e``: 0 when ``d == e``, else ``rtt_ms[d, e] + x / bandwidth[d, e]``
  (bandwidth in bytes per ms);
- memory of a range: ``sum(param_bytes[a:b]) + max(live_bytes[a:b])``; it must fit ``mem_bytes[d]``
  (monotone in the range, which the DPs rely on);
- latency: input transfer ``source -> d_0`` of ``cut_bytes[0]``, every stage's compute, every cut
  transfer ``d_j -> d_{j+1}`` of ``cut_bytes[p_{j+1}]``, and the answer ``d_last -> sink`` of
  ``cut_bytes[n]``; ``source``/``sink`` None means that leg is free;
- bottleneck (pipelined serving): the largest of those compute and transfer terms; throughput is
  ``1000 / bottleneck`` requests per second;
- energy per inference: ``power_w[d] * compute_ms`` for each stage plus ``radio_nj_per_byte[d] * 1e-6``
  per byte each device sends.
Pure: numpy only, no I/O.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

OBJECTIVES = ("latency", "throughput")


@dataclass(frozen=True, eq=False)
class PlanningProblem:
    """A model over ``n`` ops and ``m`` candidate devices (the shortlist the filters left).

    ``op_ms[d, i]`` may be ``inf`` where device ``d`` cannot run op ``i``.
    ``first_device`` pins stage 0 (privacy: raw input never leaves that device).
    """

    op_ms: np.ndarray  # (m, n)
    param_bytes: np.ndarray  # (n,)
    live_bytes: np.ndarray  # (n,)
    cut_bytes: np.ndarray  # (n + 1,)
    mem_bytes: np.ndarray  # (m,), np.inf = unlimited
    rtt_ms: np.ndarray  # (m, m)
    bandwidth: np.ndarray  # (m, m) bytes per ms
    device_ids: tuple[str, ...]
    source: int | None = None
    sink: int | None = None
    max_partitions: int = 1
    first_device: int | None = None
    objective: str = "latency"
    power_w: np.ndarray | None = None  # (m,)
    radio_nj_per_byte: np.ndarray | None = None  # (m,)

    @property
    def n_ops(self) -> int:
        return int(self.op_ms.shape[1])

    @property
    def n_devices(self) -> int:
        return int(self.op_ms.shape[0])

    def transfer_ms(self, src: int | None, dst: int | None, nbytes: float) -> float:
        if src is None or dst is None or src == dst:
            return 0.0
        return float(self.rtt_ms[src, dst] + nbytes / self.bandwidth[src, dst])

    def range_memory(self, start: int, end: int) -> float:
        return float(self.param_bytes[start:end].sum() + self.live_bytes[start:end].max())


@dataclass(frozen=True)
class StagePlan:
    index: int
    start: int
    end: int
    device: int
    compute_ms: float
    transfer_in_ms: float  # from the previous stage (or the source, for stage 0)
    memory_bytes: float
    energy_mj: float


@dataclass(frozen=True)
class Plan:
    stages: tuple[StagePlan, ...]
    latency_ms: float
    bottleneck_ms: float
    energy_mj: float
    transfer_out_ms: float  # last stage -> sink
    objective: str = "latency"
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def throughput_rps(self) -> float:
        return 1000.0 / self.bottleneck_ms if self.bottleneck_ms > 0 else float("inf")

    @property
    def cost(self) -> float:
        """The value the plan's objective minimises."""
        return self.latency_ms if self.objective == "latency" else self.bottleneck_ms

    @property
    def positions(self) -> list[int]:
        """Interior cut positions (stage boundaries without 0 and n)."""
        return [s.start for s in self.stages[1:]]

    @property
    def devices(self) -> list[int]:
        return [s.device for s in self.stages]


def evaluate(problem: PlanningProblem, positions: Sequence[int], devices: Sequence[int]) -> Plan | None:
    """Cost of cutting at ``positions`` (interior, increasing) and running stage j on ``devices[j]``.

    Returns None when the plan is infeasible: a device used twice, a range that does not fit
    its device's memory, an op a device cannot run, more stages than ``max_partitions``,
    an empty range, or stage 0 not on ``first_device``.
    """
    n = problem.n_ops
    bounds = [0, *positions, n]
    if len(devices) != len(bounds) - 1 or len(devices) > problem.max_partitions:
        return None
    if len(set(devices)) != len(devices) or any(b <= a for a, b in itertools.pairwise(bounds)):
        return None
    if problem.first_device is not None and devices[0] != problem.first_device:
        return None
    power = problem.power_w if problem.power_w is not None else np.zeros(problem.n_devices)
    radio = (problem.radio_nj_per_byte if problem.radio_nj_per_byte is not None
             else np.zeros(problem.n_devices))
    stages: list[StagePlan] = []
    terms: list[float] = []
    energy = 0.0
    previous: int | None = problem.source
    for j, ((start, end), device) in enumerate(zip(itertools.pairwise(bounds), devices, strict=True)):
        compute = float(problem.op_ms[device, start:end].sum())
        memory = problem.range_memory(start, end)
        if not np.isfinite(compute) or memory > problem.mem_bytes[device]:
            return None
        transfer_in = problem.transfer_ms(previous, device, float(problem.cut_bytes[start]))
        sent_by = previous if previous is not None and previous != device else None
        stage_energy = float(power[device]) * compute
        if sent_by is not None:
            energy += float(radio[sent_by]) * 1e-6 * float(problem.cut_bytes[start])
        energy += stage_energy
        stages.append(StagePlan(j, start, end, device, compute, transfer_in, memory, stage_energy))
        terms += [compute, transfer_in]
        previous = device
    transfer_out = problem.transfer_ms(previous, problem.sink, float(problem.cut_bytes[n]))
    if problem.sink is not None and previous is not None and previous != problem.sink:
        energy += float(radio[previous]) * 1e-6 * float(problem.cut_bytes[n])
    terms.append(transfer_out)
    latency = sum(terms)
    return Plan(tuple(stages), latency, max(terms), energy, transfer_out, problem.objective)
