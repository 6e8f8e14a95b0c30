"""An emulated node's battery: its charge falls with the energy its stages draw, and rises on charge.

Model (units: W, s, J, Wh, percentage points):

- **discharge**: every stage run on the node draws ``power_w`` (the profile's draw while
  computing) for the *emulated* compute time, i.e. the host's elapsed time divided by the
  profile's ``speed_factor`` (what :class:`node_engine.emulation.Emulator` waits out). The
  energy ``E = power_w * t_compute`` (J) lowers the charge by ``100 * E / (3600 * battery_wh)``
  points. No idle draw is counted: only the draw a placement decision can move away is
  emulated, so a node that serves nothing keeps its charge and tests are deterministic in the
  work done, not in the wall time they take. The link's radio energy is not drawn either.
- **charge**: while the charger is on (:class:`~treeline_common.charge.ChargeControl` in
  ``<data dir>/charge.json``), the charge rises by ``percent_per_s`` points per second of
  wall time (monotonic clock), minus what the stages still draw meanwhile.
- the charge stays within 0..100; at 0 % the emulated node keeps serving (a real device would
  shut down: the cluster's battery rule moves work away long before that).

The capacity comes from the profile's ``battery_wh``, overridden by ``--battery-wh`` /
``TREELINE_NODE_BATTERY_WH`` (tests and the demo use a capacity of a few tenths of a mWh so a
few hundred requests cross a threshold). A native node never emulates a battery.

Threading: :meth:`EmulatedBattery.draw` runs on the data plane's compute workers, readings on
the telemetry thread; one lock guards the state.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from pathlib import Path

from treeline_common.charge import CHARGE_FILE, ChargeControl
from treeline_common.messages import Battery, PayloadError, from_dict
from treeline_common.profiles import DeviceProfile

log = logging.getLogger(__name__)

JOULES_PER_WH = 3600.0


def percent_drawn(energy_j: float, capacity_wh: float) -> float:
    """Percentage points of a ``capacity_wh`` battery that ``energy_j`` joules take (>= 0)."""
    if capacity_wh <= 0.0 or energy_j <= 0.0:
        return 0.0
    return 100.0 * energy_j / (capacity_wh * JOULES_PER_WH)


def emulated_compute_s(elapsed_s: float, speed_factor: float) -> float:
    """Seconds the emulated device computes for host work of ``elapsed_s`` (a native-speed
    profile computes for the elapsed time itself)."""
    if elapsed_s <= 0.0:
        return 0.0
    return elapsed_s / speed_factor if 0.0 < speed_factor < 1.0 else elapsed_s


class EmulatedBattery:
    """The charge of one emulated battery (see the module docstring for the model)."""

    def __init__(self, capacity_wh: float, percent: float, power_w: float,
                 monotonic: Callable[[], float]) -> None:
        if capacity_wh <= 0.0:
            raise ValueError(f"battery_wh must be positive, not {capacity_wh!r}")
        self.capacity_wh = capacity_wh
        self.power_w = power_w
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._percent = min(100.0, max(0.0, percent))
        self._charger: ChargeControl | None = None
        self._since = monotonic()  # when the charge was last brought up to date with the charger
        self.drawn_j = 0.0  # energy drawn by stages since start (J)

    @classmethod
    def from_profile(cls, profile: DeviceProfile, monotonic: Callable[[], float]) -> EmulatedBattery | None:
        """The battery an emulated profile declares with a capacity; None otherwise."""
        if not profile.emulated or profile.battery is None or not profile.battery_wh:
            return None
        return cls(profile.battery_wh, profile.battery.percent, profile.power_w, monotonic)

    def _catch_up(self) -> None:
        now = self._monotonic()
        if self._charger is not None and self._charger.charging:
            gained = self._charger.percent_per_s * max(0.0, now - self._since)
            self._percent = min(100.0, self._percent + gained)
        self._since = now

    def draw(self, compute_s: float) -> float:
        """Stages computed for ``compute_s`` emulated seconds: lower the charge; the joules drawn."""
        energy = self.power_w * max(0.0, compute_s)
        with self._lock:
            self._catch_up()
            self._percent = max(0.0, self._percent - percent_drawn(energy, self.capacity_wh))
            self.drawn_j += energy
        return energy

    def set_charger(self, control: ChargeControl | None) -> None:
        """Charger on or off from now on (None: off)."""
        with self._lock:
            self._catch_up()
            self._charger = control

    def reading(self) -> Battery:
        """The charge now, marked emulated; ``plugged``/``charging`` while the charger is on."""
        with self._lock:
            self._catch_up()
            on = self._charger is not None and self._charger.charging
            return Battery(percent=round(self._percent, 4), charging=on and self._percent < 100.0,
                           plugged=on, emulated=True)


def read_charge_control(path: Path) -> ChargeControl | None:
    """The charger setting in ``path`` (None when there is no file).

    Raises PayloadError naming the field and the reason when the file is not a valid
    :class:`ChargeControl` (not JSON, not an object, a bad ``charging`` or ``percent_per_s``).
    """
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise PayloadError(f"ChargeControl: cannot read {path}: {exc}") from None
    try:
        body = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise PayloadError(f"ChargeControl: {path.name} is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise PayloadError(f"ChargeControl: {path.name} must hold a JSON object")
    return from_dict(ChargeControl, body)


class BatteryEmulation:
    """The emulated battery of a node engine and its charger file under the node's data dir.

    :meth:`reading` (telemetry thread) first applies the charger file: a file that does not
    decode is logged once (field and reason) and leaves the charger as it was.
    """

    def __init__(self, battery: EmulatedBattery, data_dir: Path) -> None:
        self.battery = battery
        self.control_path = data_dir / CHARGE_FILE
        self._last_error = ""

    def _poll(self) -> None:
        try:
            control = read_charge_control(self.control_path)
        except PayloadError as exc:
            if str(exc) != self._last_error:
                log.warning("ignoring %s (the charger stays as it was): %s", self.control_path, exc)
                self._last_error = str(exc)
            return
        self._last_error = ""
        self.battery.set_charger(control)

    def reading(self) -> Battery:
        """The battery now, after applying the charger file."""
        self._poll()
        return self.battery.reading()
