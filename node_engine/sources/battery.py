"""Battery charge and mains state: ``/sys/class/power_supply`` on Linux, else ``psutil.sensors_battery``.

sysfs: every supply whose ``type`` is ``Battery`` (and whose ``scope`` is not ``Device``: a
wireless mouse's battery does not power this node) gives ``capacity`` (%) and ``status``;
``plugged`` is True when a ``Mains``/``USB`` supply reports ``online`` 1, else taken from the
battery status (Charging/Full: plugged, Discharging: not), else unknown (None). Several
batteries: the mean capacity.
"""

from __future__ import annotations

from pathlib import Path

import psutil

from node_engine.sources.base import Readings, SourceContext, read_number, read_text
from treeline_common.messages import Battery

POWER_SUPPLY = "/sys/class/power_supply"
_PLUGGED_STATUS = {"Charging": True, "Full": True, "Discharging": False}


def _attr(supply: Path, name: str) -> str:
    try:
        return read_text(supply / name)
    except OSError:
        return ""


def sysfs_battery(power_supply: Path) -> Battery | None:
    """The system battery described under ``power_supply``; None when there is none.

    Raises OSError/ValueError when a battery exists but its capacity cannot be read.
    """
    if not power_supply.is_dir():
        return None
    supplies = sorted(power_supply.iterdir())
    batteries = [s for s in supplies if _attr(s, "type") == "Battery" and _attr(s, "scope") != "Device"]
    if not batteries:
        return None
    percent = sum(read_number(b / "capacity") for b in batteries) / len(batteries)
    status = _attr(batteries[0], "status")
    mains = [s for s in supplies if _attr(s, "type") in ("Mains", "USB")]
    plugged: bool | None = (any(_attr(s, "online") == "1" for s in mains) if mains
                            else _PLUGGED_STATUS.get(status))
    return Battery(percent=min(100.0, max(0.0, percent)), charging=status == "Charging", plugged=plugged)


def psutil_battery() -> Battery | None:
    """``psutil.sensors_battery()`` as a Battery (macOS, Windows, BSD); None when there is none."""
    read = getattr(psutil, "sensors_battery", None)
    found = read() if read is not None else None
    if found is None:
        return None
    plugged = found.power_plugged
    percent = min(100.0, max(0.0, float(found.percent)))
    return Battery(percent=percent, charging=bool(plugged) and percent < 100,
                   plugged=None if plugged is None else bool(plugged))


class BatterySource:
    """``battery``: a :class:`Battery`. Absent on mains-only hosts: ``battery`` stays null."""

    name = "battery"
    replaced_when_emulated = True

    def __init__(self, context: SourceContext) -> None:
        self._context = context

    def _read(self) -> Battery | None:
        return sysfs_battery(self._context.path(POWER_SUPPLY)) or psutil_battery()

    def probe(self) -> bool:
        return self._read() is not None

    def read(self) -> Readings:
        battery = self._read()
        if battery is None:
            raise RuntimeError("the battery found at start is gone")
        return {"battery": battery}

    def close(self) -> None:
        """Nothing to release."""
