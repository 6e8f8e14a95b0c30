"""Filter plugins: which nodes may take part in a plan, each rejection with a reason code.

Each filter is a small named class answering for every node at once (see
``ml_scheduler.framework.interfaces.FilterPlugin``). Reason codes are the ``REASON_*``
constants; messages carry the node's and the request's numbers so an operator can act.
Filters only remove nodes that can NOT be used; what is best is the scorers' and the exact
planner's business.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ml_scheduler.framework.request import PlacementRequest
from ml_scheduler.framework.status import Code
from ml_scheduler.snapshot import ClusterSnapshot

REASON_OFFLINE = "offline"
REASON_NO_COMPUTE = "no_compute"
REASON_PRIVACY_PIN = "privacy_pin"
REASON_DIRECT = "direct"
REASON_ARCH = "arch"
REASON_RUNTIME = "runtime"
REASON_ACCELERATOR = "accelerator"
REASON_INSUFFICIENT_MEMORY = "insufficient_memory"
REASON_BATTERY = "battery"
REASON_ENERGY_BUDGET = "energy_budget"

_MIB = 1024 * 1024
Reasons = Sequence[tuple[str, str]]


def _everyone(snapshot: ClusterSnapshot) -> np.ndarray:
    return np.ones(len(snapshot.nodes), dtype=bool)


def selector_text(node: str | None, label: str | None) -> str:
    return f"node {node!r}" if node is not None else f"label {label!r}"


class NodeOnline:
    """Offline nodes cannot run anything; they may come back, hence ``UNSCHEDULABLE``."""

    name = "node_online"
    rejection = Code.UNSCHEDULABLE

    def filter(self, request: PlacementRequest, snapshot: ClusterSnapshot) -> np.ndarray:
        return snapshot.columns().online.copy()

    def reasons(self, request: PlacementRequest, snapshot: ClusterSnapshot, rejected: np.ndarray) -> Reasons:
        names = snapshot.columns().names
        return [(REASON_OFFLINE, f"node {names[i]} is not online") for i in rejected]


class NodeCompute:
    """A node reporting ``speed_factor <= 0`` has no compute to offer (a broken profile)."""

    name = "node_compute"
    rejection = Code.UNSCHEDULABLE_AND_UNRESOLVABLE

    def filter(self, request: PlacementRequest, snapshot: ClusterSnapshot) -> np.ndarray:
        return snapshot.columns().speed > 0

    def reasons(self, request: PlacementRequest, snapshot: ClusterSnapshot, rejected: np.ndarray) -> Reasons:
        speed = snapshot.columns().speed
        return [(REASON_NO_COMPUTE, f"speed_factor {speed[i]:g} <= 0") for i in rejected]


class PrivacyPin:
    """Stage 0 must run on a node the pin matches (raw input never leaves it).

    This filter only answers "can the pin be honoured at all": when NO online node matches
    it, every node is rejected as unresolvable; otherwise it rejects nothing, because the
    other stages may run anywhere. The runner additionally keeps a matching node in the
    shortlist, and the planner pins stage 0 to it.
    """

    name = "privacy_pin"
    rejection = Code.UNSCHEDULABLE_AND_UNRESOLVABLE

    def filter(self, request: PlacementRequest, snapshot: ClusterSnapshot) -> np.ndarray:
        pin = request.privacy_pin
        if pin is None:
            return _everyone(snapshot)
        cols = snapshot.columns()
        if (cols.selector_mask(pin.node, pin.label) & cols.online).any():
            return _everyone(snapshot)
        return np.zeros(cols.size, dtype=bool)

    def reasons(self, request: PlacementRequest, snapshot: ClusterSnapshot, rejected: np.ndarray) -> Reasons:
        pin = request.privacy_pin
        assert pin is not None
        message = f"no online node matches the privacy pin ({selector_text(pin.node, pin.label)})"
        return [(REASON_PRIVACY_PIN, message)] * len(rejected)


class DirectConstraint:
    """Oakestra ``direct``: when nodes or labels are named, only those nodes qualify."""

    name = "direct"
    rejection = Code.UNSCHEDULABLE_AND_UNRESOLVABLE

    def filter(self, request: PlacementRequest, snapshot: ClusterSnapshot) -> np.ndarray:
        if not request.direct_nodes and not request.direct_labels:
            return _everyone(snapshot)
        cols = snapshot.columns()
        return (cols.mask(cols.by_name, request.direct_nodes) | cols.mask(cols.by_id, request.direct_nodes)
                | cols.mask(cols.by_label, request.direct_labels))

    def reasons(self, request: PlacementRequest, snapshot: ClusterSnapshot, rejected: np.ndarray) -> Reasons:
        wanted = ", ".join([f"node {n!r}" for n in request.direct_nodes] +
                           [f"label {label!r}" for label in request.direct_labels])
        names = snapshot.columns().names
        return [(REASON_DIRECT, f"node {names[i]} matches none of the direct constraint's {wanted}")
                for i in rejected]


class NodeArch:
    """The model's artifacts or runtime build may exist only for some CPU architectures."""

    name = "node_arch"
    rejection = Code.UNSCHEDULABLE_AND_UNRESOLVABLE

    def filter(self, request: PlacementRequest, snapshot: ClusterSnapshot) -> np.ndarray:
        if not request.allowed_archs:
            return _everyone(snapshot)
        cols = snapshot.columns()
        codes = [i for i, arch in enumerate(cols.archs) if arch in request.allowed_archs]
        return np.isin(cols.arch, codes)

    def reasons(self, request: PlacementRequest, snapshot: ClusterSnapshot, rejected: np.ndarray) -> Reasons:
        cols = snapshot.columns()
        allowed = ", ".join(request.allowed_archs)
        return [(REASON_ARCH, f"arch {cols.archs[cols.arch[i]] or '(unknown)'} not in allowed {allowed}")
                for i in rejected]


class Runtime:
    """The node must be able to execute the model's format (onnxruntime by default)."""

    name = "runtime"
    rejection = Code.UNSCHEDULABLE_AND_UNRESOLVABLE

    def filter(self, request: PlacementRequest, snapshot: ClusterSnapshot) -> np.ndarray:
        cols = snapshot.columns()
        return cols.mask(cols.by_runtime, (request.required_runtime,))

    def reasons(self, request: PlacementRequest, snapshot: ClusterSnapshot, rejected: np.ndarray) -> Reasons:
        names = snapshot.columns().names
        runtime = request.required_runtime
        return [(REASON_RUNTIME, f"node {names[i]} has no {runtime} runtime") for i in rejected]


class Accelerator:
    """Every accelerator kind the SLA requires (e.g. ``gpu`` for ``vgpus > 0``) must be present."""

    name = "accelerator"
    rejection = Code.UNSCHEDULABLE_AND_UNRESOLVABLE

    def filter(self, request: PlacementRequest, snapshot: ClusterSnapshot) -> np.ndarray:
        cols = snapshot.columns()
        out = _everyone(snapshot)
        for kind in request.required_accelerators:
            out &= cols.mask(cols.by_accelerator, (kind,))
        return out

    def reasons(self, request: PlacementRequest, snapshot: ClusterSnapshot, rejected: np.ndarray) -> Reasons:
        cols = snapshot.columns()
        has = {k: cols.mask(cols.by_accelerator, (k,)) for k in request.required_accelerators}
        return [(REASON_ACCELERATOR, f"node {cols.names[i]} lacks accelerator(s) "
                 + ", ".join(k for k, mask in has.items() if not mask[i])) for i in rejected]


class NodeMemory:
    """A node whose memory limit is below the smallest possible stage can hold no stage.

    ``min_stage_bytes`` is a lower bound (one op's weights plus outputs), so this never
    removes a node the planner could use; whether a given range fits is decided there.
    Unknown limits (``None``) count as unlimited, as in ``NodeView``.
    """

    name = "node_memory"
    rejection = Code.UNSCHEDULABLE_AND_UNRESOLVABLE

    def filter(self, request: PlacementRequest, snapshot: ClusterSnapshot) -> np.ndarray:
        return snapshot.columns().memory_mb * _MIB >= request.min_stage_bytes

    def reasons(self, request: PlacementRequest, snapshot: ClusterSnapshot, rejected: np.ndarray) -> Reasons:
        memory = snapshot.columns().memory_mb
        need = request.min_stage_bytes / _MIB
        return [(REASON_INSUFFICIENT_MEMORY,
                 f"node has {memory[i]:.2f} MiB, smallest stage needs {need:.2f} MiB") for i in rejected]


class BatteryLevel:
    """SLA ``battery.min_percent``: battery nodes below it are spared; mains nodes always pass.

    ``UNSCHEDULABLE``: the node may charge and qualify later.
    """

    name = "battery_level"
    rejection = Code.UNSCHEDULABLE

    def filter(self, request: PlacementRequest, snapshot: ClusterSnapshot) -> np.ndarray:
        if request.min_battery_percent is None:
            return _everyone(snapshot)
        battery = snapshot.columns().battery
        return np.isnan(battery) | (battery >= request.min_battery_percent)

    def reasons(self, request: PlacementRequest, snapshot: ClusterSnapshot, rejected: np.ndarray) -> Reasons:
        battery = snapshot.columns().battery
        floor = request.min_battery_percent
        return [(REASON_BATTERY, f"battery {battery[i]:g}% below the SLA's minimum {floor:g}%")
                for i in rejected]


def whole_model_energy_mj(request: PlacementRequest, snapshot: ClusterSnapshot) -> np.ndarray:
    """Per node: ``power_w * ms`` to run the whole model alone, ms from FLOPs at
    ``reference_gflops * speed_factor`` (W x ms = mJ); ``inf`` for nodes without compute."""
    cols = snapshot.columns()
    flops_per_ms = request.reference_gflops * 1e6 * cols.speed
    with np.errstate(divide="ignore", invalid="ignore"):
        safe = np.where(flops_per_ms > 0, flops_per_ms, 1.0)
        ms = np.where(flops_per_ms > 0, request.model_flops / safe, np.inf)
    return cols.power_w * ms


def input_radio_energy_mj(request: PlacementRequest, snapshot: ClusterSnapshot) -> np.ndarray:
    """Per node: mJ its radio spends sending ``input_bytes`` (``nJ/byte * bytes * 1e-6``)."""
    return snapshot.columns().radio_nj_per_byte * request.input_bytes * 1e-6


class EnergyBudget:
    """SLA ``energy.max_mj_per_inference`` as a coarse prefilter.

    A node can take part in a plan within budget either by running the whole model alone or
    by running a share and handing a tensor on. The rule: reject the node iff BOTH
    (a) running the whole model on it alone exceeds the budget
    (``power_w * model_flops / (reference_gflops * speed_factor)``), AND
    (b) its radio energy to send one input-sized tensor exceeds the budget
    (``radio_nj_per_byte * input_bytes * 1e-6``), the input standing in for the tensor a
    shared stage must send on. Such a node is hopeless either way. It is a heuristic, not an
    exact bound (a late cut tensor may be smaller than the input): the exact planner
    evaluates every plan's energy afterwards and the scheduler rejects plans over budget.
    """

    name = "energy_budget"
    rejection = Code.UNSCHEDULABLE_AND_UNRESOLVABLE

    def filter(self, request: PlacementRequest, snapshot: ClusterSnapshot) -> np.ndarray:
        budget = request.energy_budget_mj
        if budget is None:
            return _everyone(snapshot)
        too_costly = (whole_model_energy_mj(request, snapshot) > budget) & (
            input_radio_energy_mj(request, snapshot) > budget)
        return ~too_costly

    def reasons(self, request: PlacementRequest, snapshot: ClusterSnapshot, rejected: np.ndarray) -> Reasons:
        whole = whole_model_energy_mj(request, snapshot)
        radio = input_radio_energy_mj(request, snapshot)
        budget = request.energy_budget_mj
        return [(REASON_ENERGY_BUDGET,
                 (f"whole model alone needs {whole[i]:.1f} mJ and sending the input {radio[i]:.1f} mJ, "
                  f"both over the SLA's {budget:g} mJ per inference")) for i in rejected]


# The order the runner applies filters in; a node keeps the reason of the FIRST filter that
# rejects it. The privacy pin goes first: when it cannot be honoured that is THE reason
# nothing can be placed. Then the transient and cheap checks, then the request-specific ones.
FILTERS = (PrivacyPin, NodeOnline, NodeCompute, DirectConstraint, NodeArch, Runtime, Accelerator,
           NodeMemory, BatteryLevel, EnergyBudget)
