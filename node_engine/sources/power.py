"""Power draw: a Jetson's INA3221 input rail, else Intel/AMD RAPL package energy, else an estimate.

- **INA3221** (Jetson): JetPack 5+ exposes hwmon channels
  ``/sys/bus/i2c/drivers/ina3221/<dev>/hwmon/hwmon*/in<N>_label`` with ``in<N>_input`` (mV) and
  ``curr<N>_input`` (mA); JetPack 4 exposes ``/sys/bus/i2c/drivers/ina3221x/<dev>/iio:device*/``
  ``rail_name_<N>`` with ``in_power<N>_input`` (mW). The board's input rail (``VDD_IN``,
  ``POM_5V_IN`` or ``VIN``) is the total when there is one, else the sum of the rails.
- **RAPL**: ``/sys/class/powercap/intel-rapl:<N>/energy_uj`` of every package domain; watts =
  energy delta / time delta, a counter wrap corrected by ``max_energy_range_uj``. Since Linux
  5.10 the counters are readable by root only: present but unreadable is an *error* (the
  sources map says why), not an absent source.
- **Estimate** (:func:`estimate_power`): neither readable, or an emulated node: the profile's
  declared ``power_w`` times the CPU load share, marked ``estimated``.
"""

from __future__ import annotations

import re
from pathlib import Path

from node_engine.sources.base import Readings, SourceContext, read_number, read_text
from treeline_common.messages import PowerReading

POWERCAP = "/sys/class/powercap"
INA_HWMON = "/sys/bus/i2c/drivers/ina3221"
INA_IIO = "/sys/bus/i2c/drivers/ina3221x"
INPUT_RAILS = ("VDD_IN", "POM_5V_IN", "VIN")
_PACKAGE = re.compile(r"intel-rapl:\d+")


def estimate_power(power_w: float, cpu_percent: float) -> PowerReading:
    """The declared draw while computing (W) scaled by the CPU load (%): a profile's estimate."""
    return PowerReading(watts=round(power_w * min(100.0, max(0.0, cpu_percent)) / 100.0, 3),
                        source="profile", estimated=True)


def _hwmon_rails(hwmon: Path) -> dict[str, float]:
    rails: dict[str, float] = {}
    for label in sorted(hwmon.glob("in*_label")):
        channel = label.name[2:-len("_label")]
        name = read_text(label)
        if channel == "7" or "NC" in name.split():  # "sum of shunt voltages"; unconnected rails
            continue
        millivolts = read_number(hwmon / f"in{channel}_input")
        milliamps = read_number(hwmon / f"curr{channel}_input")
        rails[name] = millivolts * milliamps / 1e6
    return rails


def _iio_rails(device: Path) -> dict[str, float]:
    rails: dict[str, float] = {}
    for label in sorted(device.glob("rail_name_*")):
        channel = label.name[len("rail_name_"):]
        rails[read_text(label)] = read_number(device / f"in_power{channel}_input") / 1000.0
    return rails


def ina_rails(context: SourceContext) -> dict[str, float]:
    """Every INA3221 rail on the board: name -> watts (empty when there is no INA3221)."""
    rails: dict[str, float] = {}
    for hwmon in sorted(context.path(INA_HWMON).glob("*/hwmon/hwmon*")):
        rails.update(_hwmon_rails(hwmon))
    for device in sorted(context.path(INA_IIO).glob("*/iio:device*")):
        rails.update(_iio_rails(device))
    return rails


def ina_total(rails: dict[str, float]) -> float:
    """The input rail when the board has one, else the sum of its rails (W)."""
    for name in INPUT_RAILS:
        if name in rails:
            return rails[name]
    return sum(rails.values())


class PowerSource:
    """``power``: a measured :class:`PowerReading` (``ina3221`` or ``rapl``); absent when neither
    exists (the telemetry then carries the profile estimate)."""

    name = "power"
    replaced_when_emulated = True

    def __init__(self, context: SourceContext) -> None:
        self._context = context
        self._method = ""
        self._domains: list[Path] = []
        self._last: tuple[float, tuple[float, ...]] | None = None  # (monotonic s, µJ per domain)

    def probe(self) -> bool:
        if ina_rails(self._context):
            self._method = "ina3221"
            return True
        domains = sorted(d for d in self._context.path(POWERCAP).glob("intel-rapl:*")
                         if _PACKAGE.fullmatch(d.name) and (d / "energy_uj").exists())
        if not domains:
            return False
        self._domains, self._method = domains, "rapl"
        try:
            self._last = (self._context.monotonic(), self._energy_uj())
        except PermissionError:
            raise PermissionError("RAPL energy_uj is readable by root only") from None
        return True

    def _energy_uj(self) -> tuple[float, ...]:
        return tuple(read_number(d / "energy_uj") for d in self._domains)

    def _rapl_watts(self) -> float | None:
        now, energy = self._context.monotonic(), self._energy_uj()
        last, self._last = self._last, (now, energy)
        if last is None or now <= last[0]:
            return None
        delta = 0.0
        for domain, current, previous in zip(self._domains, energy, last[1], strict=True):
            step = current - previous
            if step < 0:  # this domain's counter wrapped
                step += read_number(domain / "max_energy_range_uj")
            delta += max(0.0, step)
        return delta / 1e6 / (now - last[0])

    def read(self) -> Readings:
        if self._method == "ina3221":
            watts = ina_total(ina_rails(self._context))
            return {"power": PowerReading(watts=round(watts, 3), source="ina3221")}
        rapl = self._rapl_watts()
        return {} if rapl is None else {"power": PowerReading(watts=round(rapl, 3), source="rapl")}

    def close(self) -> None:
        self._last = None
