"""Discovery at start and one read of every source per telemetry sample.

:class:`SourceSet` probes each registered source once (:meth:`SourceSet.discover`) and keeps
the state of each: ``ok``, ``absent``, ``emulated`` (an emulated node takes the reading from its
profile) or ``error: <reason>``. A source that fails to probe stays in error for the life of
the node (probing again every sample could cost what NVML's init costs); a source that fails a
read is read again next sample. State changes are logged once, not every sample.

Threading: a SourceSet is used by one thread (the daemon's telemetry loop).
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass

from node_engine.sources.base import Readings, SourceContext, TelemetrySource
from node_engine.sources.registry import SOURCES, SourceFactory

log = logging.getLogger(__name__)

OK, ABSENT, EMULATED = "ok", "absent", "emulated"
MAX_REASON = 160


def error_state(exc: BaseException) -> str:
    """``error: <Type>: <message>``, bounded: what the sources map says about a failure."""
    return f"error: {type(exc).__name__}: {exc}"[:MAX_REASON]


@dataclass(frozen=True)
class Sample:
    """One read of every source: merged NodeTelemetry fields and each source's state."""

    readings: Readings
    states: dict[str, str]


def merge(into: Readings, update: Mapping[str, object]) -> None:
    """Add one source's readings: lists under a key already present are concatenated."""
    for key, value in update.items():
        current = into.get(key)
        if isinstance(current, list) and isinstance(value, list):
            into[key] = current + value
        else:
            into[key] = value


class SourceSet:
    """The sources discovered on this device. Construct with :meth:`discover`."""

    def __init__(self, sources: dict[str, TelemetrySource], states: dict[str, str]) -> None:
        self._sources = sources  # the ones to read: probed present
        self._states = states  # every registered source's state

    @classmethod
    def discover(cls, context: SourceContext, emulated: bool,
                 registry: Mapping[str, SourceFactory] = SOURCES,
                 only: Iterable[str] | None = None,
                 declared: Collection[str] | None = None) -> SourceSet:
        """Probe every source of ``registry`` (``only`` those named, when given); never raises.

        On an emulated node the sources ``replaced_when_emulated`` are not probed: those the
        profile declares (``declared``; None: all of them) are ``emulated``, the others ``absent``
        (an emulated Raspberry Pi has no NVIDIA GPU, whatever the host has).
        """
        wanted = set(only) if only is not None else None
        sources: dict[str, TelemetrySource] = {}
        states: dict[str, str] = {}
        for name, factory in registry.items():
            if wanted is not None and name not in wanted:
                continue
            source = factory(context)
            if emulated and source.replaced_when_emulated:
                states[name] = EMULATED if declared is None or name in declared else ABSENT
                continue
            try:
                present = source.probe()
            except Exception as exc:  # noqa: BLE001 - any failure of a probe is recorded, not fatal
                states[name] = error_state(exc)
                log.warning("telemetry source %s failed to probe: %s", name, states[name])
                source.close()
                continue
            states[name] = OK if present else ABSENT
            if present:
                sources[name] = source
        log.info("telemetry sources: %s", ", ".join(f"{n}={s}" for n, s in states.items()))
        return cls(sources, states)

    @property
    def states(self) -> dict[str, str]:
        """Each registered source's state after the last read (a copy)."""
        return dict(self._states)

    def read(self) -> Sample:
        """Read every present source once; a failing source is recorded in the states, never raised."""
        readings: Readings = {}
        for name, source in self._sources.items():
            try:
                merge(readings, source.read())
                state = OK
            except Exception as exc:  # noqa: BLE001 - one broken source must not stop the others
                state = error_state(exc)
            if state != self._states.get(name):
                log.log(logging.INFO if state == OK else logging.WARNING,
                        "telemetry source %s: %s", name, state)
            self._states[name] = state
        return Sample(readings, dict(self._states))

    def close(self) -> None:
        """Close every source (idempotent)."""
        for source in self._sources.values():
            try:
                source.close()
            except Exception:  # closing is best effort at shutdown
                log.debug("closing telemetry source failed", exc_info=True)
