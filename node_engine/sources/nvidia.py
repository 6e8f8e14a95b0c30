"""NVIDIA GPUs through NVML (the ``nvidia-ml-py`` package, imported as ``pynvml``).

Present when ``pynvml`` imports, ``nvmlInit`` finds a driver (``libnvidia-ml``) and at least one
device. NVML is initialised once at probe (it can take a while without persistence mode) and
shut down at close. Each figure a device does not support (``NVMLError``, e.g. power on some
boards) is None in its :class:`GpuReading`, never 0.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from types import ModuleType
from typing import Any

from node_engine.sources.base import Readings, SourceContext, bytes_to_mb
from treeline_common.messages import GpuReading

log = logging.getLogger(__name__)


def import_pynvml() -> ModuleType:
    """The ``pynvml`` module (optional dependency; raises ImportError when not installed)."""
    return importlib.import_module("pynvml")


def _optional(nvml: ModuleType, call: Callable[[], Any]) -> Any:
    """``call()``, or None when NVML says the device cannot answer it."""
    try:
        return call()
    except nvml.NVMLError:
        return None


class NvidiaSource:
    """``gpus``: one :class:`GpuReading` per NVML device (utilisation %, memory MiB, °C, W)."""

    name = "nvidia"
    replaced_when_emulated = True

    def __init__(self, context: SourceContext, load: Callable[[], ModuleType] = import_pynvml) -> None:
        self._context = context
        self._load = load
        self._nvml: ModuleType | None = None
        self._handles: list[Any] = []

    def probe(self) -> bool:
        try:
            nvml = self._load()
        except ImportError:
            return False
        try:
            nvml.nvmlInit()
        except nvml.NVMLError as exc:  # no driver / library: absent, not an error
            log.debug("NVML unavailable: %s", exc)
            return False
        self._nvml = nvml
        self._handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(nvml.nvmlDeviceGetCount())]
        if not self._handles:
            self.close()
        return bool(self._handles)

    def read(self) -> Readings:
        nvml = self._nvml
        if nvml is None:
            raise RuntimeError("NVML was closed")
        return {"gpus": [self._reading(nvml, i, h) for i, h in enumerate(self._handles)]}

    @staticmethod
    def _reading(nvml: ModuleType, index: int, handle: Any) -> GpuReading:
        name = nvml.nvmlDeviceGetName(handle)
        util = _optional(nvml, lambda: nvml.nvmlDeviceGetUtilizationRates(handle))
        memory = _optional(nvml, lambda: nvml.nvmlDeviceGetMemoryInfo(handle))
        temp = _optional(nvml, lambda: nvml.nvmlDeviceGetTemperature(handle, nvml.NVML_TEMPERATURE_GPU))
        milliwatts = _optional(nvml, lambda: nvml.nvmlDeviceGetPowerUsage(handle))
        return GpuReading(
            index=index, name=name.decode() if isinstance(name, bytes) else str(name), vendor="nvidia",
            utilization_percent=float(util.gpu) if util is not None else None,
            memory_used_mb=bytes_to_mb(memory.used) if memory is not None else None,
            memory_total_mb=bytes_to_mb(memory.total) if memory is not None else None,
            temperature_c=float(temp) if temp is not None else None,
            power_w=round(milliwatts / 1000.0, 2) if milliwatts is not None else None)

    def close(self) -> None:
        nvml, self._nvml, self._handles = self._nvml, None, []
        if nvml is not None:
            try:
                nvml.nvmlShutdown()
            except nvml.NVMLError as exc:
                log.debug("nvmlShutdown: %s", exc)
