"""What a node says about itself: the registration body and the periodic telemetry.

Readings come from the telemetry sources (:mod:`node_engine.sources`), discovered once when a
:class:`TelemetryReader` first reads; a source absent on this device leaves its fields null or
empty and says ``absent`` in the sample's ``sources`` map (never a zero). The profile decides
what the node *offers* (memory limit, speed) and whether it is emulated: an emulated node takes
its battery, accelerators and power from the profile, each marked emulated/estimated, and its
CPU, memory, disk, network and temperatures from the host. A native node reports real readings
only; its power is estimated from the profile's ``power_w`` (marked ``estimated``) when no RAPL
or INA3221 counter is readable. Memory offered is the profile's limit, or the host's total.
"""

from __future__ import annotations

import dataclasses
import platform
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import psutil

from node_engine.sources import REQUIRED, SOURCES, Sample, SourceContext, SourceSet
from node_engine.sources.power import estimate_power
from node_engine.sources.registry import SourceFactory
from node_engine.training import missing_extra
from treeline_common.capabilities import capability_labels
from treeline_common.clock import Clock
from treeline_common.messages import Accelerator, Battery, NodeTelemetry, PowerReading
from treeline_common.profiles import DeviceProfile


class TelemetryUnavailable(RuntimeError):
    """A sample cannot be built: a required source (CPU, memory) failed; the message says why."""


def offered_memory_mb(profile: DeviceProfile, total_mb: int) -> int:
    """The profile's memory limit capped by the host's ``total_mb``, or the total without a limit."""
    return min(profile.memory_limit_mb, total_mb) if profile.memory_limit_mb else total_mb


def memory_limit_mb(profile: DeviceProfile) -> int:
    return offered_memory_mb(profile, int(psutil.virtual_memory().total // (1024 * 1024)))


def arch_of(profile: DeviceProfile) -> str:
    """The emulated device's architecture, or this host's for a real (native) device."""
    return profile.arch if profile.emulated else platform.machine()


def emulated_sources(profile: DeviceProfile) -> set[str]:
    """The telemetry sources an emulated ``profile`` stands in for: power (estimated from the
    profile) and the accelerator list always; battery when it declares one; an NVIDIA or Jetson
    GPU when it declares a GPU (``jetson`` when labelled so). The rest are absent on it."""
    names = {"power", "onnxruntime"}
    if profile.battery is not None:
        names.add("battery")
    if any(a.kind == "gpu" for a in profile.accelerators):
        names.add("jetson" if "jetson" in profile.labels else "nvidia")
    return names


def emulated_battery(profile: DeviceProfile) -> Battery | None:
    """The profile's declared battery, marked emulated (None when it declares none)."""
    return dataclasses.replace(profile.battery, emulated=True) if profile.battery else None


def emulated_accelerators(profile: DeviceProfile) -> list[Accelerator]:
    """The profile's declared accelerators, marked emulated."""
    return [dataclasses.replace(a, emulated=True) for a in profile.accelerators]


def registration_body(name: str, profile: DeviceProfile, data_endpoint: str,
                      labels: tuple[str, ...] = (), instance_id: str = "",
                      can_train: bool | None = None, can_evaluate: bool = False) -> dict[str, Any]:
    """Body of ``POST /api/node/register`` (docs/contracts.md, Cluster REST).

    ``instance_id`` names this process: the cluster refuses the name while another live
    process holds it (two stacks, or two nodes started with one name, never share it).
    ``labels`` end with the capability labels (:mod:`treeline_common.capabilities`):
    ``treeline:infer`` always, ``treeline:train`` when ``can_train`` (None: this install has
    the ``train`` extra, :func:`node_engine.training.missing_extra`, found without importing torch).
    """
    if can_train is None:
        can_train = not missing_extra()
    return {
        "name": name,
        "instance_id": instance_id,
        "profile": profile.name,
        "emulated": profile.emulated,
        "arch": arch_of(profile),
        "cpu_count": psutil.cpu_count() or 1,
        "memory_limit_mb": memory_limit_mb(profile),
        "speed_factor": profile.speed_factor,
        "accelerators": [dataclasses.asdict(a) for a in emulated_accelerators(profile)],
        # the registration contract's battery is {percent, charging}; telemetry carries the rest
        "battery": ({"percent": profile.battery.percent, "charging": profile.battery.charging}
                    if profile.battery else None),
        "labels": list(dict.fromkeys([*profile.labels, *labels,
                                      *capability_labels(can_train, can_evaluate)])),
        "data_endpoint": data_endpoint,
        # Declared device figures for the planner's energy and link costs (docs/contracts.md,
        # "Scheduler v2 additions"); emulated links charge the same uplink figures.
        "power_w": profile.power_w,
        "radio_nj_per_byte": profile.radio_nj_per_byte,
        "uplink_mbps": profile.uplink_mbps,
        "link_rtt_ms": profile.link_rtt_ms,
        "device_class": profile.device_class,
    }


def build_telemetry(node_id: str, profile: DeviceProfile, stages: list[str], now: float, seq: int,
                    sample: Sample) -> NodeTelemetry:
    """One NodeTelemetry from a read of the sources (pure).

    Raises :class:`TelemetryUnavailable` when a required source (CPU, memory) gave no reading.
    """
    readings: Mapping[str, Any] = sample.readings
    for name in REQUIRED:
        state = sample.states.get(name, "not registered")
        if state != "ok":
            raise TelemetryUnavailable(f"telemetry source {name} is {state}")
    cpu_percent = float(readings["cpu_percent"])
    measured: PowerReading | None = readings.get("power")
    if profile.emulated:
        accelerators, battery, gpus = emulated_accelerators(profile), emulated_battery(profile), []
    else:
        accelerators = readings.get("accelerators", [])
        battery, gpus = readings.get("battery"), readings.get("gpus", [])
    if measured is None or profile.emulated:
        power = estimate_power(profile.power_w, cpu_percent)
    else:
        power = measured
    return NodeTelemetry(
        node_id=node_id, ts=now, cpu_percent=cpu_percent, cpu_count=int(readings["cpu_count"]),
        memory_percent=float(readings["memory_percent"]), memory_total_mb=int(readings["memory_total_mb"]),
        memory_available_mb=int(readings["memory_available_mb"]),
        memory_limit_mb=offered_memory_mb(profile, int(readings["memory_total_mb"])),
        profile=profile.name, emulated=profile.emulated, speed_factor=profile.speed_factor,
        accelerators=list(accelerators), battery=battery, stages=list(stages), seq=seq,
        cpu_per_core=list(readings.get("cpu_per_core", [])), disk=readings.get("disk"),
        network=readings.get("network"), temperatures_c=readings.get("temperatures_c"),
        gpus=list(gpus), power=power, sources=sample.states,
    )


class TelemetryReader:
    """The telemetry sources of one node engine, discovered on the first read and kept.

    Keeping them is what gives rates (disk IO, network, RAPL power) a previous sample to
    compare with, and initialises NVML once. Use from one thread; :meth:`close` at shutdown.
    ``root`` relocates ``/sys`` and ``/proc`` (tests); ``disk_path`` is the directory whose
    filesystem the disk reading describes (the node's data directory).
    """

    def __init__(self, profile: DeviceProfile, clock: Clock, *, root: Path = Path("/"), disk_path: str = "/",
                 registry: Mapping[str, SourceFactory] = SOURCES) -> None:
        self.profile = profile
        self._clock = clock
        self._context = SourceContext(root=root, disk_path=disk_path, monotonic=clock.monotonic,
                                      power_w=profile.power_w)
        self._registry = registry
        self._sources: SourceSet | None = None

    def discover(self) -> dict[str, str]:
        """Probe the sources now (the first :meth:`read` does it otherwise); their states."""
        if self._sources is None:
            self._sources = SourceSet.discover(self._context, self.profile.emulated, self._registry,
                                               declared=emulated_sources(self.profile))
        return self._sources.states

    def read(self, node_id: str, stages: list[str], seq: int = 0) -> NodeTelemetry:
        """One telemetry sample (see :func:`build_telemetry`; raises TelemetryUnavailable)."""
        self.discover()
        assert self._sources is not None
        return build_telemetry(node_id, self.profile, stages, self._clock.now(), seq, self._sources.read())

    def close(self) -> None:
        if self._sources is not None:
            self._sources.close()
            self._sources = None


def read_telemetry(node_id: str, profile: DeviceProfile, stages: list[str], clock: Clock,
                   seq: int = 0, reader: TelemetryReader | None = None) -> NodeTelemetry:
    """One telemetry sample. ``cpu_percent`` is since the previous call in this process.

    ``stages`` MUST be the stage keys (``stage_key``, generation included) served right now and
    ``seq`` the birth seq of the MQTT session the sample goes out on: the cluster reconciles
    its placements against the first and trusts the sample over a stale ``offline`` by the second.
    Pass the node's long-lived ``reader``: without one the sources are discovered for this
    sample only, so rates (disk IO, network, RAPL) are null and NVML is initialised every call.
    Raises :class:`TelemetryUnavailable` when CPU or memory cannot be read.
    """
    if reader is not None:
        return reader.read(node_id, stages, seq)
    one_shot = TelemetryReader(profile, clock)
    try:
        return one_shot.read(node_id, stages, seq)
    finally:
        one_shot.close()
