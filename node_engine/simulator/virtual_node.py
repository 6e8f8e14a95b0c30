"""One virtual node: what it says about itself and how it answers commands (no I/O here).

A :class:`VirtualNode` builds the same payloads a real node engine sends
(:mod:`treeline_common.messages`) and applies deploy and delete commands to an in-memory
stage table. It never downloads or runs an artifact: a deploy is answered with ``READY`` at
once (``load_ms`` 0), a relay stage likewise, so the cluster sees a node that serves every
stage it is given. Telemetry figures are synthetic (declared by the profile, plus a small
seeded noise and 5 % CPU per stage served), and marked ``emulated``.

Semantics kept from :mod:`node_engine.commands` (the cluster relies on them):

- stages are keyed by ``stage_key(deployment_id, stage, generation)``; a deploy of a new
  generation adds a stage beside the old one (make-before-break);
- a repeated deploy of a held key only re-reports ``READY`` (idempotent);
- a delete selects by ``generation`` and ``stage`` as :class:`DeleteCommand` states; every
  dropped stage is reported ``REMOVED`` with its own generation, and deleting a named stage
  that is not held still reports ``REMOVED`` (with the command's generation, 0 when none).

Thread-safety: the stage table is guarded by a lock (commands arrive on a network thread,
telemetry is built on the scheduler thread).
"""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass
from typing import Any

from treeline_common.messages import (
    DeleteCommand,
    DeployCommand,
    NodeStatus,
    NodeTelemetry,
    StageState,
    StageStats,
    parse_stage_key,
    stage_key,
)
from treeline_common.profiles import DeviceProfile

# Cores a virtual device of each profile declares (the host's own count means nothing here).
VIRTUAL_CPUS = {"server": 8, "jetson-nano": 4, "rpi4": 4, "rpi-zero": 1, "native": 4}
DEFAULT_MEMORY_MB = 8192  # memory offered by a profile that declares none (native)
STAGE_MEMORY_MB = 64  # synthetic memory a served stage takes from what the node offers
SIM_CLASS_PREFIX = "sim-"  # device classes of virtual nodes: their profiles are synthetic


@dataclass(frozen=True)
class _Stage:
    deployment_id: str
    index: int
    generation: int
    sha256: str


class VirtualNode:
    """A registered virtual node. ``node_id`` is set from the cluster's registration answer."""

    def __init__(self, name: str, profile: DeviceProfile, index: int, first_seq: int, seed: int = 0) -> None:
        """``first_seq``: the birth seq the first session starts above (ms of wall clock, as a real
        node does, so a restarted simulator outranks its previous statuses)."""
        self.name = name
        self.profile = profile
        self.index = index
        self.node_id = ""
        self.instance_id = ""
        self.mqtt_username: str | None = None
        self.mqtt_password: str | None = None
        self._seq = first_seq
        self._random = random.Random(seed * 1_000_003 + index)
        self._lock = threading.Lock()
        self._stages: dict[str, _Stage] = {}

    # ---------------------------------------------------------------- identity

    @property
    def device_class(self) -> str:
        """``sim-<profile>``: never mixed with op-time profiles measured on real devices."""
        return f"{SIM_CLASS_PREFIX}{self.profile.name}"

    @property
    def cpu_count(self) -> int:
        return VIRTUAL_CPUS.get(self.profile.name, 4)

    @property
    def memory_mb(self) -> int:
        return self.profile.memory_limit_mb or DEFAULT_MEMORY_MB

    def registration_body(self, data_endpoint: str) -> dict[str, Any]:
        """Body of ``POST /api/node/register``, as :func:`node_engine.telemetry.registration_body`
        builds it, with declared (virtual) figures instead of host readings."""
        p = self.profile
        return {
            "name": self.name, "instance_id": self.instance_id, "profile": p.name, "emulated": True,
            "arch": p.arch, "cpu_count": self.cpu_count, "memory_limit_mb": self.memory_mb,
            "speed_factor": p.speed_factor,
            "accelerators": [{"kind": a.kind, "name": a.name, "memory_mb": a.memory_mb, "emulated": True}
                             for a in p.accelerators],
            "battery": {"percent": p.battery.percent, "charging": p.battery.charging} if p.battery else None,
            "labels": [*p.labels, "simulated"], "data_endpoint": data_endpoint,
            "power_w": p.power_w, "radio_nj_per_byte": p.radio_nj_per_byte, "uplink_mbps": p.uplink_mbps,
            "link_rtt_ms": p.link_rtt_ms, "device_class": self.device_class,
        }

    # ---------------------------------------------------------------- liveness

    @property
    def seq(self) -> int:
        with self._lock:
            return self._seq

    def next_will(self, now: float) -> NodeStatus:
        """The will of the next connection attempt: every attempt gets a new, larger seq."""
        with self._lock:
            self._seq += 1
            return NodeStatus(self.node_id, "offline", self._seq, now)

    def birth(self, now: float) -> NodeStatus:
        return NodeStatus(self.node_id, "online", self.seq, now)

    def leave(self, now: float) -> NodeStatus:
        """The ``offline`` a clean stop publishes (same seq as the current birth)."""
        return NodeStatus(self.node_id, "offline", self.seq, now)

    # ---------------------------------------------------------------- telemetry

    def stage_keys(self) -> list[str]:
        with self._lock:
            return sorted(self._stages)

    def telemetry(self, now: float) -> NodeTelemetry:
        """One synthetic sample: 5-15 % idle CPU plus 5 % per stage, memory minus 64 MB per stage."""
        with self._lock:
            stages = sorted(self._stages)
            noise = self._random.uniform(5.0, 15.0)
            seq = self._seq
        used = min(self.memory_mb, STAGE_MEMORY_MB * len(stages) + self.memory_mb // 10)
        return NodeTelemetry(
            node_id=self.node_id, ts=now, cpu_percent=round(min(100.0, noise + 5.0 * len(stages)), 1),
            cpu_count=self.cpu_count, memory_percent=round(100.0 * used / self.memory_mb, 1),
            memory_total_mb=self.memory_mb, memory_available_mb=self.memory_mb - used,
            memory_limit_mb=self.memory_mb, profile=self.profile.name, emulated=True,
            speed_factor=self.profile.speed_factor, accelerators=list(self.profile.accelerators),
            battery=self.profile.battery, stages=stages, seq=seq)

    def stage_stats(self, now: float) -> list[StageStats]:
        """Per-stage statistics as a real node sends them; virtual stages serve no requests."""
        with self._lock:
            stages = list(self._stages.values())
        return [StageStats(self.node_id, s.deployment_id, s.index, 0, 0.0, now, s.generation) for s in stages]

    # ---------------------------------------------------------------- commands

    def deploy(self, cmd: DeployCommand, now: float) -> StageState:
        """Hold the stage (nothing is fetched or loaded) and answer ``READY``."""
        key = stage_key(cmd.deployment_id, cmd.stage, cmd.generation)
        with self._lock:
            self._stages[key] = _Stage(cmd.deployment_id, cmd.stage, cmd.generation, cmd.sha256.lower())
        return StageState(self.node_id, cmd.deployment_id, cmd.stage, "READY", cmd.generation, ts=now)

    def delete(self, cmd: DeleteCommand, now: float) -> list[StageState]:
        """Drop the stages ``cmd`` selects; one ``REMOVED`` per stage (see the module docstring)."""
        with self._lock:
            chosen = [k for k, s in self._stages.items() if s.deployment_id == cmd.deployment_id
                      and (cmd.stage is None or s.index == cmd.stage)
                      and (cmd.generation is None or s.generation == cmd.generation)]
            removed = [self._stages.pop(k) for k in chosen]
        states = [StageState(self.node_id, s.deployment_id, s.index, "REMOVED", s.generation, ts=now)
                  for s in removed]
        if cmd.stage is not None and not removed:
            states.append(StageState(self.node_id, cmd.deployment_id, cmd.stage, "REMOVED",
                                     cmd.generation if cmd.generation is not None else 0, ts=now))
        return states

    def holds(self, deployment_id: str) -> bool:
        """Whether any stage of ``deployment_id`` is held (tests and benchmarks read it)."""
        with self._lock:
            return any(parse_stage_key(k)[0] == deployment_id for k in self._stages)
