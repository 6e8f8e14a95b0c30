"""The emulated battery: discharge by the energy stages draw, charging at a declared rate, the
charger file (validated, bad files named and ignored), and the capacity flag/variable."""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
from pathlib import Path

import pytest

from node_engine.config import BATTERY_WH_ENV, parse_args
from node_engine.emulation import Emulator
from node_engine.sources.battery_emulated import (
    CHARGE_FILE,
    BatteryEmulation,
    EmulatedBattery,
    emulated_compute_s,
    percent_drawn,
    read_charge_control,
)
from treeline_common.charge import ChargeControl
from treeline_common.clock import FakeClock
from treeline_common.messages import PayloadError
from treeline_common.profiles import get_profile


@pytest.mark.parametrize(("energy_j", "capacity_wh", "points"), [
    (36.0, 1.0, 1.0),  # 1 Wh = 3600 J: 36 J is one percentage point
    (3600.0, 1.0, 100.0),
    (0.0, 1.0, 0.0),
    (-5.0, 1.0, 0.0),  # no negative draw
    (7.2, 0.002, 100.0),  # 0.002 Wh = 7.2 J
])
def test_percent_drawn(energy_j: float, capacity_wh: float, points: float) -> None:
    assert percent_drawn(energy_j, capacity_wh) == pytest.approx(points)


@pytest.mark.parametrize(("elapsed", "speed", "compute"), [
    (0.01, 0.25, 0.04), (0.01, 1.0, 0.01), (0.01, 2.0, 0.01), (0.0, 0.25, 0.0), (0.01, 0.0, 0.01)])
def test_emulated_compute_time(elapsed: float, speed: float, compute: float) -> None:
    assert emulated_compute_s(elapsed, speed) == pytest.approx(compute)


def test_stage_runs_lower_the_charge_by_power_times_emulated_compute_time() -> None:
    clock = FakeClock()
    profile = dataclasses.replace(get_profile("rpi4"), battery_wh=0.001)  # 3.6 J
    battery = EmulatedBattery.from_profile(profile, clock.monotonic)
    assert battery is not None and battery.reading().percent == pytest.approx(80.0)
    stop = threading.Event()
    stop.set()  # the emulated wait returns at once
    emulator = Emulator.from_profile(profile, stop, battery)
    emulator.slow_down(0.01)  # 0.04 s on an rpi4 at 6 W: 0.24 J = 6.67 points of 3.6 J
    reading = battery.reading()
    assert reading.percent == pytest.approx(80.0 - 100.0 * 0.24 / 3.6, abs=1e-3)
    assert reading.emulated and not reading.charging and reading.plugged is False
    assert battery.drawn_j == pytest.approx(0.24)
    for _ in range(100):
        emulator.slow_down(0.01)
    assert battery.reading().percent == 0.0  # never below empty


def test_no_battery_without_a_declared_battery_capacity_or_emulation() -> None:
    clock = FakeClock()
    assert EmulatedBattery.from_profile(get_profile("server"), clock.monotonic) is None
    assert EmulatedBattery.from_profile(get_profile("native"), clock.monotonic) is None
    assert EmulatedBattery.from_profile(dataclasses.replace(get_profile("rpi4"), battery_wh=None),
                                        clock.monotonic) is None
    with pytest.raises(ValueError, match="battery_wh"):
        EmulatedBattery(0.0, 50.0, 6.0, clock.monotonic)


def test_charging_rises_at_the_declared_rate_minus_what_stages_draw_and_stops_at_full() -> None:
    clock = FakeClock()
    battery = EmulatedBattery(1.0, 20.0, 36.0, clock.monotonic)  # 36 W for 1 s = 1 point
    battery.set_charger(ChargeControl(charging=True, percent_per_s=2.0))
    clock.advance(10.0)
    assert battery.reading().percent == pytest.approx(40.0)
    assert battery.reading().charging and battery.reading().plugged
    battery.draw(5.0)  # 5 points drawn while charging
    clock.advance(1.0)
    assert battery.reading().percent == pytest.approx(37.0)
    clock.advance(100.0)
    full = battery.reading()
    assert full.percent == 100.0 and not full.charging and full.plugged
    battery.set_charger(ChargeControl(charging=False))
    clock.advance(10.0)
    assert battery.reading().percent == 100.0  # off charge, no draw: no idle loss


def test_charger_file_is_validated_and_a_bad_one_is_logged_once_and_ignored(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    emulation = BatteryEmulation(EmulatedBattery(1.0, 50.0, 6.0, clock.monotonic), tmp_path)
    path = tmp_path / CHARGE_FILE
    assert read_charge_control(path) is None
    path.write_text(json.dumps({"charging": True, "percent_per_s": 5}))
    emulation.reading()
    clock.advance(2.0)
    assert emulation.reading().percent == pytest.approx(60.0)
    path.write_text(json.dumps({"charging": True, "percent_per_s": -1}))
    with pytest.raises(PayloadError, match="percent_per_s must be >= "):
        read_charge_control(path)
    with caplog.at_level(logging.WARNING):
        emulation.reading()
        clock.advance(2.0)
        assert emulation.reading().percent == pytest.approx(70.0)  # the charger stays on as it was
    assert sum("percent_per_s" in r.getMessage() for r in caplog.records) == 1
    bad_files = (("[1]", "JSON object"), ("{", "not JSON"), ('{"charging": "yes"}', "charging must be"))
    for bad, reason in bad_files:
        path.write_text(bad)
        with pytest.raises(PayloadError, match=reason):
            read_charge_control(path)
    path.unlink()
    emulation.reading()
    clock.advance(5.0)
    assert emulation.reading().percent == pytest.approx(70.0)  # no file: off charge


def test_capacity_flag_and_variable(monkeypatch: pytest.MonkeyPatch,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    base = ["--cluster-url", "http://127.0.0.1:1", "--name", "n1"]
    monkeypatch.delenv(BATTERY_WH_ENV, raising=False)
    assert parse_args([*base, "--profile", "rpi4"]).profile.battery_wh == 37.0
    assert parse_args([*base, "--profile", "rpi4", "--battery-wh", "0.0005"]).profile.battery_wh == 0.0005
    monkeypatch.setenv(BATTERY_WH_ENV, "0.002")
    assert parse_args([*base, "--profile", "rpi4"]).profile.battery_wh == 0.002
    assert parse_args([*base, "--profile", "server"]).profile.battery_wh is None  # no battery declared
    monkeypatch.setenv(BATTERY_WH_ENV, "lots")
    with pytest.raises(SystemExit) as exited:
        parse_args([*base, "--profile", "rpi4"])
    assert exited.value.code == 2 and BATTERY_WH_ENV in capsys.readouterr().err
    monkeypatch.delenv(BATTERY_WH_ENV)
    with pytest.raises(SystemExit):
        parse_args([*base, "--profile", "rpi4", "--battery-wh", "-1"])
    assert "--battery-wh must be a positive number" in capsys.readouterr().err
