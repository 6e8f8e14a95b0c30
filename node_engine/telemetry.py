"""What a node says about itself: the registration body and the periodic telemetry.

Host readings come from psutil; the profile decides what the node *offers* (memory
limit, accelerators, battery, speed) and whether it is emulated, so an emulated node is
always marked as such. Memory offered is the profile's limit, or the host's total when
the profile has none.
"""

from __future__ import annotations

import dataclasses
import platform
from typing import Any

import psutil

from treeline_common.clock import Clock
from treeline_common.messages import NodeTelemetry
from treeline_common.profiles import DeviceProfile


def memory_limit_mb(profile: DeviceProfile) -> int:
    total_mb = int(psutil.virtual_memory().total // (1024 * 1024))
    return min(profile.memory_limit_mb, total_mb) if profile.memory_limit_mb else total_mb


def arch_of(profile: DeviceProfile) -> str:
    """The emulated device's architecture, or this host's for a real (native) device."""
    return profile.arch if profile.emulated else platform.machine()


def registration_body(name: str, profile: DeviceProfile, data_endpoint: str,
                      labels: tuple[str, ...] = (), instance_id: str = "") -> dict[str, Any]:
    """Body of ``POST /api/node/register`` (docs/contracts.md, Cluster REST).

    ``instance_id`` names this process: the cluster refuses the name while another live
    process holds it (two stacks, or two nodes started with one name, never share it).
    """
    return {
        "name": name,
        "instance_id": instance_id,
        "profile": profile.name,
        "emulated": profile.emulated,
        "arch": arch_of(profile),
        "cpu_count": psutil.cpu_count() or 1,
        "memory_limit_mb": memory_limit_mb(profile),
        "speed_factor": profile.speed_factor,
        "accelerators": [dataclasses.asdict(a) for a in profile.accelerators],
        "battery": dataclasses.asdict(profile.battery) if profile.battery else None,
        "labels": list(dict.fromkeys([*profile.labels, *labels])),
        "data_endpoint": data_endpoint,
        # Declared device figures for the planner's energy and link costs (docs/contracts.md,
        # "Scheduler v2 additions"); emulated links charge the same uplink figures.
        "power_w": profile.power_w,
        "radio_nj_per_byte": profile.radio_nj_per_byte,
        "uplink_mbps": profile.uplink_mbps,
        "link_rtt_ms": profile.link_rtt_ms,
        "device_class": profile.device_class,
    }


def read_telemetry(node_id: str, profile: DeviceProfile, stages: list[str], clock: Clock,
                   seq: int = 0) -> NodeTelemetry:
    """One telemetry sample. ``cpu_percent`` is since the previous call (0.0 the first time).

    ``stages`` MUST be the stage keys (``stage_key``, generation included) served right now and
    ``seq`` the birth seq of the MQTT session the sample goes out on: the cluster reconciles
    its placements against the first and trusts the sample over a stale ``offline`` by the second.
    """
    memory = psutil.virtual_memory()
    return NodeTelemetry(
        node_id=node_id,
        ts=clock.now(),
        cpu_percent=float(psutil.cpu_percent(interval=None)),
        cpu_count=psutil.cpu_count() or 1,
        memory_percent=float(memory.percent),
        memory_total_mb=int(memory.total // (1024 * 1024)),
        memory_available_mb=int(memory.available // (1024 * 1024)),
        memory_limit_mb=memory_limit_mb(profile),
        profile=profile.name,
        emulated=profile.emulated,
        speed_factor=profile.speed_factor,
        accelerators=list(profile.accelerators),
        battery=profile.battery,
        stages=stages,
        seq=seq,
    )
