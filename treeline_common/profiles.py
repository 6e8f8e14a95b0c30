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


PROFILES: dict[str, DeviceProfile] = {
    "native": DeviceProfile("native", 1.0, None, emulated=False),
    "server": DeviceProfile("server", 1.0, 16384, labels=("server",)),
    "jetson-nano": DeviceProfile(
        "jetson-nano",
        0.5,
        4096,
        arch="aarch64",
        accelerators=(Accelerator(kind="gpu", name="maxwell-128", memory_mb=4096, emulated=True),),
        labels=("jetson",),
    ),
    "rpi4": DeviceProfile("rpi4", 0.25, 4096, arch="aarch64", battery=Battery(percent=80.0), labels=("rpi",)),
    "rpi-zero": DeviceProfile(
        "rpi-zero", 0.05, 512, arch="armv6l", battery=Battery(percent=60.0), labels=("rpi",)
    ),
}

DEFAULT_DEMO_PROFILES = ("server", "jetson-nano", "rpi4")


def get_profile(name: str) -> DeviceProfile:
    """Look a profile up by name; unknown names fail with the list of known ones."""
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown device profile {name!r}; known: {', '.join(sorted(PROFILES))}") from None
