"""The figures a canary is judged on: probe runs through both versions, agreement, live stage stats.

- :func:`outputs_agree` (pure): two answers to one input agree when every output has the same
  shape and is close (``rtol``/``atol``), or, for scores over classes (last axis > 1), has the
  same argmax everywhere: a quantised variant that keeps every top-1 class agrees.
- :func:`run_probe` (I/O): sends seeded, generated inputs (:func:`treeline_cli.input_values.
  random_inputs`, valid per input kind) to one pipeline's entry with the data-plane client and
  returns the answers, their latencies and errors. The cluster signs with the generation's data
  key, which every entry admits.
- :class:`StageStatsBoard`: the newest :class:`~treeline_common.messages.StageStats` per stage,
  fed from the MQTT thread; the rollout runner waits on it for new figures (no polling sleep).
"""

from __future__ import annotations

import logging
import statistics
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from node_engine.data_plane.client import TensorClient
from treeline_cli.input_values import random_inputs
from treeline_common.messages import StageStats

log = logging.getLogger(__name__)

PROBE_SEED = 1234  # the same inputs go through both versions and every rollout of a service
PROBE_TIMEOUT_S = 10.0  # one probe request


def outputs_agree(a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray],
                  rtol: float = 1e-3, atol: float = 1e-4) -> bool:
    """Whether two answers to one input agree (module docstring). Different output names disagree."""
    if set(a) != set(b):
        return False
    for name, left in a.items():
        x, y = np.asarray(left), np.asarray(b[name])
        if x.shape != y.shape:
            return False
        if x.dtype.kind in "fc" or y.dtype.kind in "fc":
            if np.allclose(x, y, rtol=rtol, atol=atol, equal_nan=True):
                continue
            if x.ndim >= 1 and x.shape[-1] > 1 and np.array_equal(x.argmax(axis=-1), y.argmax(axis=-1)):
                continue
            return False
        if not np.array_equal(x, y):
            return False
    return True


@dataclass
class ProbeResult:
    """One pipeline's answers to the probe inputs (None where a request failed), latencies (ms)."""

    answers: list[dict[str, np.ndarray] | None] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def median_ms(self) -> float | None:
        return statistics.median(self.latencies_ms) if self.latencies_ms else None


def probe_inputs(specs: Sequence[Mapping[str, Any]], count: int) -> list[dict[str, np.ndarray]]:
    """``count`` seeded inputs valid for ``specs`` ([] when the inputs are unknown)."""
    if count <= 0 or not specs:
        return []
    return list(random_inputs(list(specs), count, seed=PROBE_SEED))


def run_probe(endpoint: str, stage_key: str, key: str, inputs: Sequence[Mapping[str, np.ndarray]],
              clock_ms: Any) -> ProbeResult:
    """Send every input to the entry ``stage_key`` at ``endpoint`` (signed with ``key``, hex), one
    at a time; ``clock_ms()`` reads a monotonic clock in ms. Never raises: failures are recorded."""
    result = ProbeResult()
    try:
        with TensorClient(endpoint, key=key) as client:
            for sample in inputs:
                start = clock_ms()
                try:
                    outputs, _ = client.infer(stage_key, sample, timeout=PROBE_TIMEOUT_S)
                except (RuntimeError, TimeoutError) as exc:
                    result.answers.append(None)
                    result.errors.append(str(exc))
                    continue
                result.latencies_ms.append(clock_ms() - start)
                result.answers.append({k: np.array(v) for k, v in outputs.items()})
    except Exception as exc:  # noqa: BLE001 - a client that cannot even start fails every input
        log.warning("probe of %s at %s failed: %s", stage_key, endpoint, exc)
        missing = len(inputs) - len(result.answers)
        result.answers += [None] * missing
        result.errors += [f"probe client: {exc}"] * missing
    return result


def disagreement(old: ProbeResult, new: ProbeResult) -> float | None:
    """Share (0..1) of the inputs both answered on which the answers disagree; None when none."""
    pairs = [(a, b) for a, b in zip(old.answers, new.answers, strict=False)
             if a is not None and b is not None]
    if not pairs:
        return None
    return sum(not outputs_agree(a, b) for a, b in pairs) / len(pairs)


class StageStatsBoard:
    """The newest StageStats per ``(deployment_id, generation, stage)``; thread-safe, waitable."""

    def __init__(self) -> None:
        self._latest: dict[tuple[str, int, int], StageStats] = {}
        self._cond = threading.Condition()
        self._seq = 0

    def observe(self, stats: StageStats) -> None:
        with self._cond:
            self._latest[(stats.deployment_id, stats.generation, stats.stage)] = stats
            self._seq += 1
            self._cond.notify_all()

    def seq(self) -> int:
        """A counter bumped by every report (pass it to :meth:`wait_after`)."""
        with self._cond:
            return self._seq

    def wait_after(self, seq: int, timeout: float) -> int:
        """Block until a report newer than ``seq`` arrived or ``timeout`` s passed; the new counter."""
        with self._cond:
            self._cond.wait_for(lambda: self._seq != seq, timeout=max(0.0, timeout))
            return self._seq

    def requests(self, deployment_id: str, generation: int, stage: int) -> int:
        with self._cond:
            stats = self._latest.get((deployment_id, generation, stage))
            return stats.requests if stats is not None else 0

    def compute_ms(self, deployment_id: str, generation: int, stages: Sequence[int]) -> float | None:
        """Sum over ``stages`` of their mean compute ms per request (None until every one reported)."""
        with self._cond:
            found = [self._latest.get((deployment_id, generation, s)) for s in stages]
        if not found or any(s is None or s.requests == 0 for s in found):
            return None
        return sum(s.compute_ms_mean for s in found if s is not None)

    def measured(self, deployment_id: str, generation: int) -> list[dict[str, Any]]:
        """The newest report of each stage of one generation, by stage index: ``{stage, requests,
        compute_ms_mean, e2e_requests, e2e_ms_mean, ts}`` (since the stage started; end to end at
        the entry only; ``ts`` in epoch seconds, the node's clock). Empty before the first report."""
        with self._cond:
            found = sorted((k[2], s) for k, s in self._latest.items()
                           if k[0] == deployment_id and k[1] == generation)
        return [{"stage": index, "requests": s.requests, "compute_ms_mean": round(s.compute_ms_mean, 4),
                 "e2e_requests": s.e2e_requests, "e2e_ms_mean": round(s.e2e_ms_mean, 4), "ts": s.ts}
                for index, s in found]

    def forget(self, deployment_id: str) -> None:
        with self._cond:
            for key in [k for k in self._latest if k[0] == deployment_id]:
                del self._latest[key]
