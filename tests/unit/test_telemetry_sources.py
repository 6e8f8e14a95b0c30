"""Telemetry sources read through psutil, onnxruntime and NVML: present, absent, broken.

The OS is faked only at its boundary: psutil functions monkeypatched, a fake ``pynvml`` module
in ``sys.modules``, a fake onnxruntime module handed to the source's loader.
"""

from __future__ import annotations

import sys
import types
from collections import namedtuple
from collections.abc import Iterator
from typing import Any

import psutil
import pytest

from node_engine.sources import ABSENT, OK, SourceContext, SourceSet
from node_engine.sources.cpu import CpuSource
from node_engine.sources.disk import DiskSource
from node_engine.sources.network import NetworkSource
from node_engine.sources.nvidia import NvidiaSource
from node_engine.sources.onnx_providers import OnnxProvidersSource
from node_engine.sources.temperature import TemperatureSource
from treeline_common.clock import FakeClock
from treeline_common.messages import Accelerator, DiskReading, GpuReading, NetworkReading

Usage = namedtuple("Usage", "total used free percent")
Io = namedtuple("Io", "read_bytes write_bytes")
Nic = namedtuple("Nic", "bytes_sent bytes_recv")
Temp = namedtuple("Temp", "label current high critical")
MiB = 1024 * 1024


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def context(clock: FakeClock) -> SourceContext:
    return SourceContext(disk_path="/data", monotonic=clock.monotonic)


def discover_one(name: str, ctx: SourceContext, factory: Any) -> SourceSet:
    return SourceSet.discover(ctx, emulated=False, registry={name: factory})


def test_cpu_per_core_and_mean(monkeypatch: pytest.MonkeyPatch, clock: FakeClock) -> None:
    monkeypatch.setattr(psutil, "cpu_percent", lambda interval=None, percpu=False: [10.0, 30.0, 80.0, 0.0])
    source = CpuSource(context(clock))
    assert source.probe()
    assert source.read() == {"cpu_percent": 30.0, "cpu_per_core": [10.0, 30.0, 80.0, 0.0], "cpu_count": 4}


def test_broken_source_is_an_error_not_a_zero(monkeypatch: pytest.MonkeyPatch, clock: FakeClock) -> None:
    sources = discover_one("cpu", context(clock), CpuSource)

    def broken(interval: Any = None, percpu: bool = False) -> list[float]:
        raise OSError("no /proc/stat")

    monkeypatch.setattr(psutil, "cpu_percent", broken)
    sample = sources.read()
    assert sample.readings == {}
    assert sample.states["cpu"] == "error: OSError: no /proc/stat"


def test_disk_usage_and_io_rates(monkeypatch: pytest.MonkeyPatch, clock: FakeClock) -> None:
    counters = iter([Io(1000, 0), Io(1000 + 4 * MiB, 2 * MiB), Io(1000 + 4 * MiB, 2 * MiB)])
    monkeypatch.setattr(psutil, "disk_usage", lambda path: Usage(100 * MiB, 25 * MiB, 75 * MiB, 25.0))
    monkeypatch.setattr(psutil, "disk_io_counters", lambda: next(counters))
    source = DiskSource(context(clock))
    assert source.probe()
    clock.advance(2.0)
    assert source.read()["disk"] == DiskReading(path="/data", total_mb=100, used_mb=25, percent=25.0,
                                                read_bytes_per_s=2 * MiB, write_bytes_per_s=1 * MiB)
    clock.advance(2.0)
    assert source.read()["disk"].read_bytes_per_s == 0.0


def test_disk_without_io_counters_has_no_rates(monkeypatch: pytest.MonkeyPatch, clock: FakeClock) -> None:
    monkeypatch.setattr(psutil, "disk_usage", lambda path: Usage(100 * MiB, 25 * MiB, 75 * MiB, 25.0))
    monkeypatch.setattr(psutil, "disk_io_counters", lambda: None)
    source = DiskSource(context(clock))
    assert source.probe()
    clock.advance(2.0)
    reading = source.read()["disk"]
    assert reading.read_bytes_per_s is None and reading.write_bytes_per_s is None


def test_network_rates_exclude_loopback(monkeypatch: pytest.MonkeyPatch, clock: FakeClock) -> None:
    samples = iter([{"lo": Nic(0, 0), "eth0": Nic(100, 1000)},
                    {"lo": Nic(10**9, 10**9), "eth0": Nic(100 + 2000, 1000 + 8000)}])
    monkeypatch.setattr(psutil, "net_io_counters", lambda pernic=False: next(samples))
    source = NetworkSource(context(clock))
    assert source.probe()
    clock.advance(2.0)
    assert source.read()["network"] == NetworkReading(rx_bytes_per_s=4000.0, tx_bytes_per_s=1000.0,
                                                      interfaces=["eth0"])


def test_network_with_loopback_only_is_absent(monkeypatch: pytest.MonkeyPatch, clock: FakeClock) -> None:
    monkeypatch.setattr(psutil, "net_io_counters", lambda pernic=False: {"lo": Nic(5, 5)})
    assert discover_one("network", context(clock), NetworkSource).states == {"network": ABSENT}


def test_network_first_sample_after_interface_change_has_no_rate(monkeypatch: pytest.MonkeyPatch,
                                                                 clock: FakeClock) -> None:
    samples = iter([{"eth0": Nic(0, 0)}, {"eth0": Nic(10, 10), "wlan0": Nic(10**9, 10**9)}])
    monkeypatch.setattr(psutil, "net_io_counters", lambda pernic=False: next(samples))
    source = NetworkSource(context(clock))
    assert source.probe()
    clock.advance(2.0)
    assert source.read()["network"] == NetworkReading(None, None, ["eth0", "wlan0"])


def test_temperatures(monkeypatch: pytest.MonkeyPatch, clock: FakeClock) -> None:
    monkeypatch.setattr(psutil, "sensors_temperatures", lambda fahrenheit=False: {
        "coretemp": [Temp("Package id 0", 48.0, 80.0, 100.0), Temp("", 45.5, None, None)],
        "acpitz": [Temp("", float("nan"), None, None)]}, raising=False)
    source = TemperatureSource(context(clock))
    assert source.probe()
    assert source.read() == {"temperatures_c": {"coretemp/Package id 0": 48.0, "coretemp/1": 45.5}}


@pytest.mark.parametrize("sensors", [lambda fahrenheit=False: {}, None])
def test_no_temperature_sensor_is_absent(monkeypatch: pytest.MonkeyPatch, clock: FakeClock,
                                         sensors: Any) -> None:
    if sensors is None:
        monkeypatch.delattr(psutil, "sensors_temperatures", raising=False)  # macOS, Windows
    else:
        monkeypatch.setattr(psutil, "sensors_temperatures", sensors, raising=False)
    assert discover_one("temperature", context(clock), TemperatureSource).states == {"temperature": ABSENT}


def test_accelerators_from_execution_providers(clock: FakeClock) -> None:
    ort = types.SimpleNamespace(get_available_providers=lambda: [
        "TensorrtExecutionProvider", "CUDAExecutionProvider", "CoreMLExecutionProvider",
        "XnnpackExecutionProvider", "AzureExecutionProvider", "CPUExecutionProvider"])
    source = OnnxProvidersSource(context(clock), load=lambda: ort)  # type: ignore[arg-type, return-value]
    assert source.probe()
    assert source.read() == {"accelerators": [Accelerator("gpu", "TensorrtExecutionProvider"),
                                              Accelerator("gpu", "CUDAExecutionProvider"),
                                              Accelerator("npu", "CoreMLExecutionProvider")]}


def test_cpu_only_onnxruntime_offers_no_accelerator(clock: FakeClock) -> None:
    source = OnnxProvidersSource(context(clock))  # the real onnxruntime of this (CPU) machine
    assert source.probe()
    assert source.read() == {"accelerators": []}


# ---------------------------------------------------------------- NVML (a fake pynvml module)


class FakeNvmlError(Exception):
    pass


def fake_pynvml(devices: list[dict[str, Any]], init_error: bool = False) -> types.ModuleType:
    """A module with pynvml's names over ``devices`` (keys ``name``, ``util``, ``used``, ``total``,
    ``temp``, ``mw``; a missing key raises NVMLError like an unsupported query)."""
    nvml = types.ModuleType("pynvml")
    calls: list[str] = []

    def query(key: str, wrap: Any = None) -> Any:
        def call(handle: int, *args: Any) -> Any:
            if key not in devices[handle]:
                raise FakeNvmlError("Not Supported")
            value = devices[handle][key]
            if isinstance(value, Exception):
                raise value
            return wrap(devices[handle]) if wrap else value
        return call

    def init() -> None:
        calls.append("init")
        if init_error:
            raise FakeNvmlError("Driver Not Loaded")

    nvml.__dict__.update(
        NVMLError=FakeNvmlError, NVML_TEMPERATURE_GPU=0, calls=calls, nvmlInit=init,
        nvmlShutdown=lambda: calls.append("shutdown"), nvmlDeviceGetCount=lambda: len(devices),
        nvmlDeviceGetHandleByIndex=lambda i: i, nvmlDeviceGetName=query("name"),
        nvmlDeviceGetUtilizationRates=query("util", lambda d: types.SimpleNamespace(gpu=d["util"])),
        nvmlDeviceGetMemoryInfo=query("used", lambda d: types.SimpleNamespace(used=d["used"],
                                                                               total=d["total"])),
        nvmlDeviceGetTemperature=query("temp"), nvmlDeviceGetPowerUsage=query("mw"))
    return nvml


@pytest.fixture
def nvml_module(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    def install(module: types.ModuleType | None) -> None:
        monkeypatch.setitem(sys.modules, "pynvml", module)  # None: ``import pynvml`` raises ImportError
    yield install


def test_nvidia_gpus(nvml_module: Any, clock: FakeClock) -> None:
    nvml = fake_pynvml([{"name": "NVIDIA H200", "util": 37, "used": 2048 * MiB, "total": 143771 * MiB,
                         "temp": 41, "mw": 123456},
                        {"name": b"Tesla T4", "util": 0, "used": 0, "total": 15360 * MiB}])
    nvml_module(nvml)
    sources = discover_one("nvidia", context(clock), NvidiaSource)
    sample = sources.read()
    assert sample.states == {"nvidia": OK}
    assert sample.readings["gpus"] == [
        GpuReading(index=0, name="NVIDIA H200", vendor="nvidia", utilization_percent=37.0,
                   memory_used_mb=2048, memory_total_mb=143771, temperature_c=41.0, power_w=123.46),
        GpuReading(index=1, name="Tesla T4", vendor="nvidia", utilization_percent=0.0, memory_used_mb=0,
                   memory_total_mb=15360, temperature_c=None, power_w=None)]  # unsupported: None, not 0
    sources.close()
    assert nvml.calls == ["init", "shutdown"]  # NVML initialised once, however many reads


@pytest.mark.parametrize("module", [None, fake_pynvml([], init_error=True), fake_pynvml([])],
                         ids=["not-installed", "no-driver", "no-device"])
def test_nvidia_absent(nvml_module: Any, clock: FakeClock, module: types.ModuleType | None) -> None:
    nvml_module(module)
    assert discover_one("nvidia", context(clock), NvidiaSource).states == {"nvidia": ABSENT}


def test_nvidia_failing_read_is_recorded(nvml_module: Any, clock: FakeClock) -> None:
    nvml_module(fake_pynvml([{"name": RuntimeError("GPU is lost"), "util": 1}]))
    sources = discover_one("nvidia", context(clock), NvidiaSource)
    sample = sources.read()
    assert "gpus" not in sample.readings
    assert sample.states["nvidia"] == "error: RuntimeError: GPU is lost"
