"""Every telemetry source the node engine knows, by name. A new source is one module in this
package and one line here; discovery (:mod:`node_engine.sources.discovery`) probes them in this
order, and lists from several sources (``gpus``) are concatenated in this order too."""

from __future__ import annotations

from collections.abc import Callable

from node_engine.sources.base import SourceContext, TelemetrySource
from node_engine.sources.battery import BatterySource
from node_engine.sources.cpu import CpuSource
from node_engine.sources.disk import DiskSource
from node_engine.sources.jetson import JetsonSource
from node_engine.sources.memory import MemorySource
from node_engine.sources.network import NetworkSource
from node_engine.sources.nvidia import NvidiaSource
from node_engine.sources.onnx_providers import OnnxProvidersSource
from node_engine.sources.power import PowerSource
from node_engine.sources.temperature import TemperatureSource

SourceFactory = Callable[[SourceContext], TelemetrySource]

SOURCES: dict[str, SourceFactory] = {
    "cpu": CpuSource,
    "memory": MemorySource,
    "disk": DiskSource,
    "network": NetworkSource,
    "temperature": TemperatureSource,
    "nvidia": NvidiaSource,
    "jetson": JetsonSource,
    "onnxruntime": OnnxProvidersSource,
    "battery": BatterySource,
    "power": PowerSource,
}

REQUIRED = ("cpu", "memory")
"""Sources whose readings NodeTelemetry requires: a sample cannot go out without them."""
