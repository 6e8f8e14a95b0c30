"""Named device emulation profiles for running heterogeneous node engines on one host.

A profile slows real work down (``speed_factor`` < 1: the node runs the real partition,
then waits out the difference), caps the memory the node offers, and declares the
accelerators and battery a device of that class has. Emulation is always explicit: a
node under a profile reports ``emulated=True`` in its telemetry. ``native`` is a real
device reporting what it really has.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from treeline_common.messages import Accelerator, Battery


@dataclass(frozen=True)
class DeviceProfile:
    name: str
    speed_factor: float  # relative compute speed; 1.0 = this host at full speed
    memory_limit_mb: int | None  # None: what the host has
    arch: str = "x86_64"
    accelerators: tuple[Accelerator, ...] = field(default_factory=tuple)
    battery: Battery | None = None
    emulated: bool = True
    labels: tuple[str, ...] = ()
    # Declared, not measured: what a device of this class draws while computing, and its
    # network uplink. The energy model and the emulated links use them.
    power_w: float = 10.0
    radio_nj_per_byte: float = 20.0
    uplink_mbps: float = 1000.0
    link_rtt_ms: float = 0.5
    # Capacity of the declared battery (Wh): an emulated node's charge falls by the energy its
    # stages draw (node_engine.sources.battery_emulated); None: no battery, or not emulated.
    battery_wh: float | None = None

    @property
    def device_class(self) -> str:
        """Profiles of op times are stored per device class (the profile name; arch for native)."""
        return self.name if self.emulated else f"native-{self.arch}"


PROFILES: dict[str, DeviceProfile] = {
    "native": DeviceProfile("native", 1.0, None, emulated=False),
    "server": DeviceProfile("server", 1.0, 16384, labels=("server",), power_w=65.0, radio_nj_per_byte=5.0,
                            uplink_mbps=1000.0, link_rtt_ms=0.5),
    "jetson-nano": DeviceProfile(
        "jetson-nano",
        0.5,
        4096,
        arch="aarch64",
        accelerators=(Accelerator(kind="gpu", name="maxwell-128", memory_mb=4096, emulated=True),),
        labels=("jetson",),
        power_w=10.0,
        radio_nj_per_byte=30.0,
        uplink_mbps=100.0,
        link_rtt_ms=2.0,
    ),
    "rpi4": DeviceProfile("rpi4", 0.25, 4096, arch="aarch64", battery=Battery(percent=80.0), labels=("rpi",),
                          power_w=6.0, radio_nj_per_byte=50.0, uplink_mbps=50.0, link_rtt_ms=5.0,
                          battery_wh=37.0),  # a 10 Ah, 3.7 V power bank
    "rpi-zero": DeviceProfile(
        "rpi-zero", 0.05, 512, arch="armv6l", battery=Battery(percent=60.0), labels=("rpi",),
        power_w=1.2, radio_nj_per_byte=80.0, uplink_mbps=10.0, link_rtt_ms=10.0, battery_wh=3.7,
    ),
    # The collaboration scenarios' devices (treeline_cli/scenarios): an edge board whose memory
    # budget (128 MB) cannot hold a small transformer once loaded (MiniLM: 91 MB of weights, about
    # LOAD_MEMORY_FACTOR x that in memory), on a LAN ...
    "edge-128": DeviceProfile("edge-128", 0.5, 128, arch="aarch64", labels=("edge",), power_w=5.0,
                              radio_nj_per_byte=30.0, uplink_mbps=100.0, link_rtt_ms=2.0),
    # ... a cloud server behind a WAN: links are charged to their sender, so the WAN's 20 Mbit/s
    # and 40 ms RTT are paid on what the cloud sends ...
    "cloud": DeviceProfile("cloud", 1.0, 65536, labels=("cloud", "server"), power_w=200.0,
                           radio_nj_per_byte=5.0, uplink_mbps=20.0, link_rtt_ms=40.0),
    # ... a slow board on gigabit Ethernet (pipelined serving: compute, not links, is the cost) ...
    "edge-board": DeviceProfile("edge-board", 0.125, 2048, arch="aarch64", labels=("edge-board",),
                                power_w=8.0, radio_nj_per_byte=10.0, uplink_mbps=1000.0, link_rtt_ms=0.5),
    # ... a battery camera: slow compute, a Wi-Fi uplink, frames arrive on it ...
    "camera": DeviceProfile("camera", 0.1, 1024, arch="aarch64", battery=Battery(percent=70.0),
                            labels=("camera",), power_w=3.0, radio_nj_per_byte=60.0, uplink_mbps=40.0,
                            link_rtt_ms=5.0),
    # ... and an edge gateway (rpi4-class compute) whose uplink to the cloud is the WAN (cascade:
    # what it escalates pays 20 Mbit/s and 40 ms RTT).
    "edge-gateway": DeviceProfile("edge-gateway", 0.25, 4096, arch="aarch64", labels=("edge",), power_w=6.0,
                                  radio_nj_per_byte=50.0, uplink_mbps=20.0, link_rtt_ms=40.0),
}

DEFAULT_DEMO_PROFILES = ("server", "jetson-nano", "rpi4")

# Resident memory of a loaded partition per byte of its artifact: measured on onnxruntime 1.32, a
# 13.5 MB MobileNetV2 partition added 30 MB RSS after loading and one run (weights, prepacked
# copies, activation arena). The node admits a partition only if this many times its artifact fits
# (node_engine/refusals.py), and the planner charges a stage's weights the same (ml_scheduler).
LOAD_MEMORY_FACTOR = 2.0


def get_profile(name: str) -> DeviceProfile:
    """Look a profile up by name; unknown names fail with the list of known ones."""
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown device profile {name!r}; known: {', '.join(sorted(PROFILES))}") from None
