"""Temperatures of the host's sensors through ``psutil.sensors_temperatures`` (Linux, FreeBSD)."""

from __future__ import annotations

import math

import psutil

from node_engine.sources.base import Readings, SourceContext


def _temperatures() -> dict[str, float]:
    """``{"<chip>/<label or index>": degrees Celsius}``; empty where psutil has no sensors."""
    read = getattr(psutil, "sensors_temperatures", None)  # absent on macOS and Windows
    if read is None:
        return {}
    readings: dict[str, float] = {}
    for chip, entries in read().items():
        for i, entry in enumerate(entries):
            if math.isfinite(entry.current):
                readings[f"{chip}/{entry.label or i}"] = round(float(entry.current), 1)
    return readings


class TemperatureSource:
    """``temperatures_c``: sensor name -> degrees Celsius. Absent when the host exposes no sensor
    (most VMs and containers): then ``temperatures_c`` is null, not an empty or zero reading."""

    name = "temperature"
    replaced_when_emulated = False

    def __init__(self, context: SourceContext) -> None:
        self._context = context

    def probe(self) -> bool:
        return bool(_temperatures())

    def read(self) -> Readings:
        readings = _temperatures()
        if not readings:
            raise RuntimeError("the sensors found at start report nothing now")
        return {"temperatures_c": readings}

    def close(self) -> None:
        """Nothing to release."""
