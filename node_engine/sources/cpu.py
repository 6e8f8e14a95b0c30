"""CPU utilisation per core and in total, through ``psutil.cpu_percent(percpu=True)``.

psutil keeps the previous per-CPU times process-wide and answers "busy share since the previous
call" (since psutil's import for the first). The node engine process has one telemetry loop,
so each sample covers the interval since the previous sample; that also holds for a one-shot
read (:func:`node_engine.telemetry.read_telemetry` without a reader), which builds its sources
anew each time. The total is the mean over the cores.
"""

from __future__ import annotations

import psutil

from node_engine.sources.base import Readings, SourceContext


class CpuSource:
    """``cpu_percent`` (mean over cores, %), ``cpu_per_core`` (%, one per logical CPU), ``cpu_count``."""

    name = "cpu"
    replaced_when_emulated = False

    def __init__(self, context: SourceContext) -> None:
        self._context = context

    def probe(self) -> bool:
        return (psutil.cpu_count() or 0) > 0

    def read(self) -> Readings:
        per_core = [round(float(p), 1) for p in psutil.cpu_percent(interval=None, percpu=True)]
        if not per_core:
            raise RuntimeError("psutil.cpu_percent(percpu=True) returned no CPU")
        return {"cpu_percent": round(sum(per_core) / len(per_core), 1), "cpu_per_core": per_core,
                "cpu_count": len(per_core)}

    def close(self) -> None:
        """Nothing to release."""
