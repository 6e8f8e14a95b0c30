"""A node's telemetry sample built from its sources: what a native node reports (real readings
only, absent sources as absent), what an emulated node reports (its profile, marked), and that the
cluster's decoder validates the new readings."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

import psutil
import pytest
from test_telemetry_sources import fake_pynvml

from node_engine.sources import SOURCES, SourceContext
from node_engine.telemetry import TelemetryReader, TelemetryUnavailable, read_telemetry
from treeline_cli.describe import device_lines
from treeline_cli.views import gpu_use, power
from treeline_common.clock import FakeClock
from treeline_common.messages import Battery, NodeTelemetry, PayloadError, PowerReading, decode, encode
from treeline_common.profiles import get_profile


@pytest.fixture(autouse=True)
def bare_host(monkeypatch: pytest.MonkeyPatch) -> None:
    """No battery, no sensors, no NVML, whatever the machine running the tests has."""
    monkeypatch.setattr(psutil, "sensors_battery", lambda: None)
    monkeypatch.setattr(psutil, "sensors_temperatures", lambda fahrenheit=False: {}, raising=False)
    monkeypatch.setitem(sys.modules, "pynvml", None)


def reader(profile: str, root: Path, **kw: Any) -> TelemetryReader:
    return TelemetryReader(get_profile(profile), FakeClock(), root=root, **kw)


def test_native_node_reports_absent_sources_as_absent(tmp_path: Path) -> None:
    sample = reader("native", tmp_path).read("node-a", ["dep/0@1"], seq=7)
    assert sample.battery is None and sample.gpus == [] and sample.temperatures_c is None
    assert set(sample.sources) == set(SOURCES)
    assert {sample.sources[k] for k in ("battery", "nvidia", "jetson", "temperature", "power")} == {"absent"}
    assert sample.sources["cpu"] == sample.sources["memory"] == sample.sources["onnxruntime"] == "ok"
    assert len(sample.cpu_per_core) == sample.cpu_count
    # nothing measures power here: the profile's estimate, marked as one
    assert sample.power is not None and sample.power.estimated and sample.power.source == "profile"
    assert decode(NodeTelemetry, encode(sample)) == sample
    assert json.loads(encode(sample))["battery"] is None


def test_native_node_reports_what_the_device_has(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml([{"name": "NVIDIA A2", "util": 5, "mw": 20000}]))
    supply = tmp_path / "sys/class/power_supply/BAT1"
    supply.mkdir(parents=True)
    for name, text in {"type": "Battery", "capacity": "91", "status": "Discharging"}.items():
        (supply / name).write_text(text)
    node = reader("native", tmp_path)
    sample = node.read("node-a", [])
    node.close()
    assert sample.battery == Battery(percent=91.0, charging=False, plugged=False)
    assert [(g.name, g.utilization_percent, g.memory_total_mb, g.power_w) for g in sample.gpus] == [
        ("NVIDIA A2", 5.0, None, 20.0)]
    assert sample.sources["battery"] == sample.sources["nvidia"] == "ok"


def test_emulated_node_keeps_its_profile_marked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml([{"name": "host GPU"}]))  # not the rpi4's
    sample = reader("rpi4", tmp_path).read("node-b", [])
    assert sample.battery == Battery(percent=80.0, emulated=True)
    assert sample.gpus == [] and sample.emulated
    assert {sample.sources[k] for k in ("battery", "onnxruntime", "power")} == {"emulated"}
    # an rpi4 declares no GPU: the host's GPU is not its own, so NVIDIA and Jetson are absent there
    assert (sample.sources["nvidia"], sample.sources["jetson"]) == ("absent", "absent")
    assert sample.power == PowerReading(watts=round(6.0 * sample.cpu_percent / 100, 3), source="profile",
                                        estimated=True)
    jetson = reader("jetson-nano", tmp_path).read("node-c", [])
    assert [(a.kind, a.emulated) for a in jetson.accelerators] == [("gpu", True)]
    assert (jetson.sources["jetson"], jetson.sources["nvidia"], jetson.sources["battery"]) == (
        "emulated", "absent", "absent")  # a Jetson Nano profile has a GPU and no battery


def test_a_broken_source_does_not_stop_the_sample(tmp_path: Path) -> None:
    class Broken:
        name, replaced_when_emulated = "broken", False

        def __init__(self, context: SourceContext) -> None:
            pass

        def probe(self) -> bool:
            return True

        def read(self) -> dict[str, Any]:
            raise PermissionError("EACCES")

        def close(self) -> None:
            pass

    sample = reader("native", tmp_path, registry={**SOURCES, "broken": Broken}).read("n", [])
    assert sample.sources["broken"] == "error: PermissionError: EACCES"
    assert sample.sources["cpu"] == "ok"


def test_without_cpu_no_sample_goes_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise OSError("no /proc/stat")

    monkeypatch.setattr(psutil, "cpu_percent", broken)
    with pytest.raises(TelemetryUnavailable, match="cpu is error: OSError: no /proc/stat"):
        reader("native", tmp_path).read("n", [])


def test_one_shot_read_still_reports_every_source(tmp_path: Path) -> None:
    sample = read_telemetry("n", get_profile("native"), [], FakeClock())
    assert set(sample.sources) == set(SOURCES) and sample.battery is None


def test_every_registered_source_is_named_by_its_key() -> None:
    for name, factory in SOURCES.items():
        source = factory(SourceContext())
        assert source.name == name
        assert isinstance(source.replaced_when_emulated, bool)


BASE = {"node_id": "n", "ts": 1.0, "cpu_percent": 1.0, "cpu_count": 2, "memory_percent": 1.0,
        "memory_total_mb": 10, "memory_available_mb": 5, "memory_limit_mb": 10}


def test_a_sender_without_the_new_readings_still_decodes() -> None:
    sample = decode(NodeTelemetry, json.dumps({**BASE, "v": 1}).encode())
    assert sample.sources == {} and sample.gpus == [] and sample.power is None


@pytest.mark.parametrize(("extra", "path"), [
    ({"cpu_per_core": [10.0, 150.0]}, "cpu_per_core[1]"),
    ({"sources": {"battery": "zero"}}, "sources.battery"),
    ({"gpus": [{"index": 0, "name": "g", "vendor": "nvidia", "utilization_percent": 120}]},
     "gpus[0].utilization_percent"),
    ({"power": {"watts": 3.0, "source": "guess"}}, "power.source"),
    ({"power": {"watts": -1.0, "source": "rapl"}}, "power.watts"),
    ({"network": {"rx_bytes_per_s": "fast"}}, "network.rx_bytes_per_s"),
    ({"temperatures_c": {"cpu": None}}, "temperatures_c.cpu"),
    ({"battery": {"percent": 50, "plugged": "yes"}}, "battery.plugged"),
])
def test_bad_readings_are_refused_naming_the_field(extra: dict[str, Any], path: str) -> None:
    with pytest.raises(PayloadError) as caught:
        decode(NodeTelemetry, json.dumps({**BASE, **extra, "v": 1}).encode())
    assert path in str(caught.value), str(caught.value)


def test_cli_shows_the_readings_and_what_is_absent(tmp_path: Path) -> None:
    tele = dataclasses.asdict(reader("native", tmp_path).read("n", []))
    tele["gpus"] = [{"index": 0, "name": "NVIDIA H200", "utilization_percent": 40.0, "memory_used_mb": 500,
                     "memory_total_mb": 143000, "temperature_c": None, "power_w": 75.2}]
    lines = device_lines(tele)
    assert "GPU 0:        NVIDIA H200, use 40.0%, memory 500/143000 MB, - °C, 75.2 W" in lines
    assert any(line.startswith("Absent:") and "battery" in line for line in lines)
    assert power({"telemetry": tele}).startswith("~") and gpu_use({"telemetry": tele}) == "40%"
    assert power({}) == gpu_use({}) == "-" and device_lines({}) == []
