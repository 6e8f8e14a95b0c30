"""The interface every telemetry source implements, and the few helpers they share.

A source is one small class that knows one kind of device reading (CPU, a battery, NVIDIA GPUs
through NVML, ...). Its life:

1. constructed with a :class:`SourceContext` (no I/O in the constructor);
2. :meth:`TelemetrySource.probe` once at start: is the source on this device? It may take the
   baseline counters its rates need. ``False`` means *absent*: the source is never read and its
   fields stay null/empty in telemetry (never zero);
3. :meth:`TelemetrySource.read` once per telemetry sample: a partial update of
   :class:`~treeline_common.messages.NodeTelemetry`, keyed by field name. Lists (``gpus``,
   ``accelerators``) of several sources are concatenated. An exception is recorded as
   ``error: <reason>`` in the sample's ``sources`` map, never replaced by zeros;
4. :meth:`TelemetrySource.close` at shutdown.

Paths under ``/sys`` and ``/proc`` are read relative to ``context.root`` so tests can lay out a
fake sysfs tree in a temporary directory; everything else a source needs from the OS (psutil,
pynvml, onnxruntime) is called through its module so tests can monkeypatch it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

Readings = dict[str, Any]
"""A partial NodeTelemetry: field name -> typed value (floats, ints, reading dataclasses)."""


@dataclass(frozen=True)
class SourceContext:
    """What sources may depend on, injected.

    ``root``: the filesystem root under which ``sys/...`` and ``proc/...`` are read (``/`` on a
    device, a temporary directory in tests). ``disk_path``: the directory whose filesystem the
    disk source reports (the node's data directory). ``monotonic``: seconds on a monotonic
    clock, for rates. ``power_w``: the device profile's declared draw while computing (W), for
    the power estimate when nothing measures it.
    """

    root: Path = Path("/")
    disk_path: str = "/"
    monotonic: Callable[[], float] = field(default=lambda: 0.0)
    power_w: float = 10.0

    def path(self, absolute: str) -> Path:
        """``absolute`` (e.g. ``/sys/class/power_supply``) under :attr:`root`."""
        return self.root / absolute.lstrip("/")


class TelemetrySource(Protocol):
    """One kind of device reading. See the module docstring for the life cycle.

    ``name`` keys the source in ``NodeTelemetry.sources``. ``replaced_when_emulated``: an
    emulated node takes this reading from its emulation profile instead (battery, accelerators,
    GPUs, power), so the source is not probed there and reported as ``emulated``.
    """

    name: str
    replaced_when_emulated: bool

    def probe(self) -> bool:
        """True when the source exists on this device. May raise: recorded as an error."""
        ...

    def read(self) -> Readings:
        """One sample as NodeTelemetry fields. May raise: recorded, the sample goes out without it."""
        ...

    def close(self) -> None:
        """Release what :meth:`probe` acquired (a library handle). Idempotent."""
        ...


def read_text(path: Path) -> str:
    """A sysfs/procfs attribute, stripped. Raises OSError when missing or unreadable."""
    return path.read_text(encoding="utf-8", errors="replace").strip()


def read_number(path: Path) -> float:
    """A numeric sysfs attribute (the first word: ``32760 ma`` reads 32760). Raises OSError/ValueError."""
    return float(read_text(path).split()[0])


class Rate:
    """Per-second rates of monotonically growing counters between consecutive samples.

    :meth:`update` returns None for the first sample and after a counter went backwards
    (a reset or a wrap the caller did not resolve): no rate is better than a wrong one.
    """

    def __init__(self) -> None:
        self._last: tuple[float, tuple[float, ...]] | None = None

    def update(self, now: float, counters: tuple[float, ...]) -> tuple[float, ...] | None:
        last, self._last = self._last, (now, counters)
        if last is None or now <= last[0]:
            return None
        deltas = tuple(c - p for c, p in zip(counters, last[1], strict=True))
        if any(d < 0 for d in deltas):
            return None
        return tuple(d / (now - last[0]) for d in deltas)


def bytes_to_mb(value: float) -> int:
    """Bytes as whole MiB."""
    return int(value // (1024 * 1024))
