"""Disk usage of the node's data directory and the host's block IO rates, through psutil."""

from __future__ import annotations

import psutil

from node_engine.sources.base import Rate, Readings, SourceContext, bytes_to_mb
from treeline_common.messages import DiskReading


class DiskSource:
    """``disk``: a :class:`DiskReading` for ``context.disk_path``.

    IO rates (bytes/s) are None on the first sample, and always where ``psutil.disk_io_counters``
    returns None (some containers expose no block devices).
    """

    name = "disk"
    replaced_when_emulated = False

    def __init__(self, context: SourceContext) -> None:
        self._context = context
        self._rate = Rate()

    def probe(self) -> bool:
        psutil.disk_usage(self._context.disk_path)
        self._io_rates()
        return True

    def _io_rates(self) -> tuple[float, ...] | None:
        counters = psutil.disk_io_counters()
        if counters is None:
            return None
        return self._rate.update(self._context.monotonic(),
                                 (float(counters.read_bytes), float(counters.write_bytes)))

    def read(self) -> Readings:
        usage = psutil.disk_usage(self._context.disk_path)
        rates = self._io_rates()
        return {"disk": DiskReading(
            path=self._context.disk_path, total_mb=bytes_to_mb(usage.total), used_mb=bytes_to_mb(usage.used),
            percent=float(usage.percent),
            read_bytes_per_s=round(rates[0], 1) if rates else None,
            write_bytes_per_s=round(rates[1], 1) if rates else None)}

    def close(self) -> None:
        """Nothing to release."""
