"""Sources read from sysfs/procfs, over a fake tree in a temporary directory: battery,
power (RAPL, INA3221) and a Jetson's integrated GPU. psutil's battery is monkeypatched."""

from __future__ import annotations

from collections import namedtuple
from pathlib import Path

import psutil
import pytest

from node_engine.sources import ABSENT, OK, SourceContext, SourceSet
from node_engine.sources.battery import BatterySource
from node_engine.sources.jetson import JetsonSource
from node_engine.sources.power import PowerSource, estimate_power
from treeline_common.clock import FakeClock
from treeline_common.messages import Battery, GpuReading, PowerReading

SBattery = namedtuple("SBattery", "percent secsleft power_plugged")


def write(root: Path, files: dict[str, str]) -> None:
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(autouse=True)
def no_psutil_battery(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(psutil, "sensors_battery", lambda: None)


def states(root: Path, clock: FakeClock, name: str, factory: object) -> dict[str, str]:
    ctx = SourceContext(root=root, monotonic=clock.monotonic)
    return SourceSet.discover(ctx, emulated=False, registry={name: factory}).states  # type: ignore[dict-item]


# ---------------------------------------------------------------- battery


LAPTOP = {"sys/class/power_supply/BAT0/type": "Battery\n", "sys/class/power_supply/BAT0/capacity": "57\n",
          "sys/class/power_supply/BAT0/status": "Discharging\n", "sys/class/power_supply/AC/type": "Mains\n",
          "sys/class/power_supply/AC/online": "0\n",
          # a wireless mouse's battery does not power the node
          "sys/class/power_supply/hidpp_battery_0/type": "Battery\n",
          "sys/class/power_supply/hidpp_battery_0/scope": "Device\n",
          "sys/class/power_supply/hidpp_battery_0/capacity": "5\n"}


def test_battery_from_sysfs(tmp_path: Path, clock: FakeClock) -> None:
    write(tmp_path, LAPTOP)
    source = BatterySource(SourceContext(root=tmp_path))
    assert source.probe()
    assert source.read() == {"battery": Battery(percent=57.0, charging=False, plugged=False)}
    write(tmp_path, {"sys/class/power_supply/AC/online": "1\n",
                     "sys/class/power_supply/BAT0/status": "Charging\n"})
    assert source.read() == {"battery": Battery(percent=57.0, charging=True, plugged=True)}


def test_battery_plugged_from_status_without_mains_supply(tmp_path: Path) -> None:
    write(tmp_path, {k: v for k, v in LAPTOP.items() if "/AC/" not in k})
    write(tmp_path, {"sys/class/power_supply/BAT0/status": "Full\n"})
    assert BatterySource(SourceContext(root=tmp_path)).read() == {
        "battery": Battery(percent=57.0, charging=False, plugged=True)}


def test_battery_from_psutil_where_sysfs_has_none(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(psutil, "sensors_battery", lambda: SBattery(42.0, 3600, True))
    source = BatterySource(SourceContext(root=tmp_path))
    assert source.probe()
    assert source.read() == {"battery": Battery(percent=42.0, charging=True, plugged=True)}


def test_mains_only_host_has_no_battery(tmp_path: Path, clock: FakeClock) -> None:
    write(tmp_path, {"sys/class/power_supply/AC/type": "Mains\n", "sys/class/power_supply/AC/online": "1\n"})
    assert states(tmp_path, clock, "battery", BatterySource) == {"battery": ABSENT}


def test_unreadable_battery_is_an_error(tmp_path: Path, clock: FakeClock) -> None:
    write(tmp_path, {**LAPTOP, "sys/class/power_supply/BAT0/capacity": "unknown\n"})
    assert states(tmp_path, clock, "battery", BatterySource)["battery"].startswith("error: ValueError")


# ---------------------------------------------------------------- power


RAPL = "sys/class/powercap/intel-rapl:0"
RAPL1 = "sys/class/powercap/intel-rapl:1"


def test_rapl_watts_from_energy_deltas(tmp_path: Path, clock: FakeClock) -> None:
    write(tmp_path, {f"{RAPL}/energy_uj": "1000000\n", f"{RAPL}/max_energy_range_uj": "262143328850\n",
                     f"{RAPL}:0/energy_uj": "999999999\n",  # a subdomain (cores): inside the package already
                     "sys/class/powercap/intel-rapl:1/energy_uj": "0\n",
                     "sys/class/powercap/intel-rapl:1/max_energy_range_uj": "10000000\n"})
    source = PowerSource(SourceContext(root=tmp_path, monotonic=clock.monotonic))
    assert source.probe()
    clock.advance(2.0)
    write(tmp_path, {f"{RAPL}/energy_uj": "31000000\n", f"{RAPL1}/energy_uj": "9000000\n"})
    assert source.read() == {"power": PowerReading(watts=19.5, source="rapl")}
    clock.advance(2.0)  # package 1 wraps at 10 J: 9 J -> 1 J is 2 J used
    write(tmp_path, {f"{RAPL}/energy_uj": "31000000\n", f"{RAPL1}/energy_uj": "1000000\n"})
    assert source.read() == {"power": PowerReading(watts=1.0, source="rapl")}


def test_unreadable_rapl_is_an_error(tmp_path: Path, clock: FakeClock) -> None:
    (tmp_path / RAPL / "energy_uj").mkdir(parents=True)  # reading it fails like a root-only file
    assert states(tmp_path, clock, "power", PowerSource)["power"].startswith("error: IsADirectoryError")


def test_no_power_counter_is_absent(tmp_path: Path, clock: FakeClock) -> None:
    assert states(tmp_path, clock, "power", PowerSource) == {"power": ABSENT}


def test_ina3221_hwmon_input_rail(tmp_path: Path) -> None:
    hwmon = "sys/bus/i2c/drivers/ina3221/1-0040/hwmon/hwmon3"
    write(tmp_path, {f"{hwmon}/in1_label": "VDD_IN\n", f"{hwmon}/in1_input": "5000\n",
                     f"{hwmon}/curr1_input": "1200\n",
                     f"{hwmon}/in2_label": "VDD_CPU_GPU_CV\n", f"{hwmon}/in2_input": "5000\n",
                     f"{hwmon}/curr2_input": "400\n", f"{hwmon}/in3_label": "NC\n"})
    source = PowerSource(SourceContext(root=tmp_path))
    assert source.probe()
    assert source.read() == {"power": PowerReading(watts=6.0, source="ina3221")}


def test_ina3221_iio_rails_summed_without_input_rail(tmp_path: Path) -> None:
    iio = "sys/bus/i2c/drivers/ina3221x/6-0040/iio:device0"
    write(tmp_path, {f"{iio}/rail_name_0": "POM_5V_GPU\n", f"{iio}/in_power0_input": "1500\n",
                     f"{iio}/rail_name_1": "POM_5V_CPU\n", f"{iio}/in_power1_input": "700 mW\n"})
    source = PowerSource(SourceContext(root=tmp_path))
    assert source.probe()
    assert source.read() == {"power": PowerReading(watts=2.2, source="ina3221")}


def test_estimate_is_marked() -> None:
    assert estimate_power(10.0, 25.0) == PowerReading(watts=2.5, source="profile", estimated=True)


# ---------------------------------------------------------------- Jetson


JETSON = {"proc/device-tree/model": "NVIDIA Jetson Nano Developer Kit\x00",
          "sys/class/devfreq/6000000.host1x/device/of_node/name": "host1x\x00",
          "sys/class/devfreq/57000000.gpu/device/of_node/name": "gpu\x00",
          "sys/class/devfreq/57000000.gpu/device/load": "345\n"}


def test_jetson_integrated_gpu_load(tmp_path: Path, clock: FakeClock) -> None:
    write(tmp_path, JETSON)
    sources = SourceSet.discover(SourceContext(root=tmp_path), emulated=False,
                                 registry={"jetson": JetsonSource})
    sample = sources.read()
    assert sample.states == {"jetson": OK}
    assert sample.readings == {"gpus": [GpuReading(index=0, name="gpu", vendor="nvidia-tegra",
                                                   utilization_percent=34.5)]}


def test_not_a_jetson(tmp_path: Path, clock: FakeClock) -> None:
    write(tmp_path, {**JETSON, "proc/device-tree/model": "Raspberry Pi 4 Model B Rev 1.4\x00"})
    assert states(tmp_path, clock, "jetson", JetsonSource) == {"jetson": ABSENT}
    assert states(tmp_path / "nothing", clock, "jetson", JetsonSource) == {"jetson": ABSENT}
