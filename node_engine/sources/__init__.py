"""Telemetry sources: one small class per kind of device reading, behind one interface.

See :mod:`node_engine.sources.base` for the interface, :mod:`~node_engine.sources.registry` for
the sources and :mod:`~node_engine.sources.discovery` for discovery and reading.
"""

from node_engine.sources.base import SourceContext, TelemetrySource
from node_engine.sources.discovery import ABSENT, EMULATED, OK, Sample, SourceSet
from node_engine.sources.registry import REQUIRED, SOURCES

__all__ = ["ABSENT", "EMULATED", "OK", "REQUIRED", "SOURCES", "Sample", "SourceContext", "SourceSet",
           "TelemetrySource"]
