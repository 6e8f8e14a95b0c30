"""A Jetson's integrated GPU through sysfs (the files ``jetson-stats``/jtop reads for it).

The board is recognised by ``/proc/device-tree/model`` naming a Jetson; its GPU is the
``/sys/class/devfreq/<id>`` entry whose ``device/of_node/name`` names a GPU (``gv11b``,
``ga10b``, ... or anything containing ``gpu``), and ``device/load`` is its utilisation in
per mille. Reading two sysfs files costs far less than running ``tegrastats`` or talking to
the jtop service (which needs its own root daemon), so neither is used. The board's power
rails (INA3221) are read by :mod:`node_engine.sources.power`.
"""

from __future__ import annotations

from pathlib import Path

from node_engine.sources.base import Readings, SourceContext, read_number, read_text
from treeline_common.messages import GpuReading

MODEL = "/proc/device-tree/model"
DEVFREQ = "/sys/class/devfreq"
KNOWN_GPUS = ("gk20a", "gm20b", "gp10b", "gv11b", "ga10b", "gb10b")


def find_igpu(devfreq: Path) -> tuple[str, Path] | None:
    """(name, device directory) of the integrated GPU under ``devfreq``; None when there is none."""
    if not devfreq.is_dir():
        return None
    for entry in sorted(devfreq.iterdir()):
        try:
            name = read_text(entry / "device" / "of_node" / "name").rstrip("\x00")
        except OSError:
            continue
        if (name.lower() in KNOWN_GPUS or "gpu" in name.lower()) and (entry / "device" / "load").exists():
            return name, entry / "device"
    return None


class JetsonSource:
    """``gpus``: the integrated GPU's utilisation (%); its memory is the shared system memory."""

    name = "jetson"
    replaced_when_emulated = True

    def __init__(self, context: SourceContext) -> None:
        self._context = context
        self._gpu: tuple[str, Path] | None = None

    def probe(self) -> bool:
        try:
            model = read_text(self._context.path(MODEL)).rstrip("\x00")
        except OSError:
            return False
        if "jetson" not in model.lower():
            return False
        self._gpu = find_igpu(self._context.path(DEVFREQ))
        return self._gpu is not None

    def read(self) -> Readings:
        if self._gpu is None:
            raise RuntimeError("no integrated GPU was found at start")
        name, device = self._gpu
        load = read_number(device / "load") / 10.0
        return {"gpus": [GpuReading(index=0, name=name, vendor="nvidia-tegra",
                                    utilization_percent=min(100.0, max(0.0, load)))]}

    def close(self) -> None:
        self._gpu = None
