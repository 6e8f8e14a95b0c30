"""The charger of an emulated battery: ``<node data dir>/charge.json``, typed once here.

Not an MQTT message: an operator (or a test, or ``treeline demo --scenario battery``) writes the
file by hand beside the node's partitions, and the node engine reads it on every telemetry tick
(:mod:`node_engine.sources.battery_emulated`). Decoded with :func:`~treeline_common.messages.from_dict`,
so a bad file is refused with the field and the reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field

CHARGE_FILE = "charge.json"


@dataclass(frozen=True)
class ChargeControl:
    """``charging`` True puts the node's emulated battery on charge: its percent then rises by
    ``percent_per_s`` (percentage points per second) while its stages still draw their energy;
    False (or no file) takes it off."""

    charging: bool
    percent_per_s: float = field(default=2.0, metadata={"min": 1e-6, "max": 100.0})
