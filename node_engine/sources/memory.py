"""Host memory from ``psutil.virtual_memory`` (total, available, used %)."""

from __future__ import annotations

import psutil

from node_engine.sources.base import Readings, SourceContext, bytes_to_mb


class MemorySource:
    """``memory_total_mb``, ``memory_available_mb`` (MiB) and ``memory_percent`` (%)."""

    name = "memory"
    replaced_when_emulated = False

    def __init__(self, context: SourceContext) -> None:
        self._context = context

    def probe(self) -> bool:
        return psutil.virtual_memory().total > 0

    def read(self) -> Readings:
        memory = psutil.virtual_memory()
        return {"memory_percent": float(memory.percent), "memory_total_mb": bytes_to_mb(memory.total),
                "memory_available_mb": bytes_to_mb(memory.available)}

    def close(self) -> None:
        """Nothing to release."""
