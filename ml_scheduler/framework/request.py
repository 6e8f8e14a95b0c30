"""``PlacementRequest``: what the filters and scorers read about one ML microservice.

Why a separate type: plugins must not dig into SLA documents or ONNX graphs. The request is
built once per cycle from the SLA view (``deployment_descriptors.Microservice``) and a few
numbers about the model (:class:`GraphStats`), then every plugin reads the same frozen value.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from deployment_descriptors.views import Microservice, NodeSelector
from treeline_common.arch import spellings

if TYPE_CHECKING:
    from ml_scheduler.graph import ModelGraph

DEFAULT_RUNTIME = "onnxruntime"
# FLOP rate of a node with speed_factor 1.0, used only where no measured op times exist (the
# energy-budget prefilter). 10 GFLOP/s is a single modern x86 core running onnxruntime fp32.
DEFAULT_REFERENCE_GFLOPS = 10.0


@dataclass(frozen=True)
class GraphStats:
    """The model numbers the filters need, independent of any partitioning.

    ``min_stage_bytes`` is the memory of the cheapest one-op stage as the planning problem
    counts it (``problem.py``: weights plus live bytes; live = the cut before the op plus its
    outputs, as ``costmodel.build_problem`` builds it). Ranges are monotone in memory, so a
    node below it can hold no stage at all; which range fits where is the planner's business.
    """

    model_param_bytes: int
    min_stage_bytes: int
    model_flops: float
    input_bytes: int

    @classmethod
    def from_graph(cls, graph: ModelGraph) -> GraphStats:
        per_op = [op.param_bytes + graph.cut_bytes(i) + op.output_bytes for i, op in enumerate(graph.ops)]
        return cls(
            model_param_bytes=int(graph.param_bytes),
            min_stage_bytes=int(min(per_op, default=0)),
            model_flops=float(graph.total_flops),
            input_bytes=int(graph.cut_bytes(0)) if graph.ops else 0,
        )


@dataclass(frozen=True)
class PlacementRequest:
    """One ML microservice's placement needs. ``None`` / empty means "not constrained".

    - ``required_accelerators``: kinds every chosen node must have (``("gpu",)`` when the SLA
      asks for ``vgpus > 0``).
    - ``allowed_archs``: CPU architectures allowed; empty = any.
    - ``direct_nodes`` / ``direct_labels``: Oakestra ``direct`` constraints; when either is
      non-empty a node must be named (by name or node id) or carry one of the labels.
    - ``privacy_pin`` / ``source``: where stage 0 must run / where the input arrives. The
      shortlist always keeps a matching node that passed the filters.
    - ``energy_budget_mj``: SLA energy per inference; ``latency_ms``: SLA end-to-end latency.
    - ``reference_gflops``: FLOP rate of a ``speed_factor`` 1.0 node (see module constant).
    """

    model_param_bytes: int
    min_stage_bytes: int
    model_flops: float = 0.0
    input_bytes: int = 0
    required_accelerators: tuple[str, ...] = ()
    required_runtime: str = DEFAULT_RUNTIME
    allowed_archs: tuple[str, ...] = ()
    min_battery_percent: float | None = None
    direct_nodes: tuple[str, ...] = ()
    direct_labels: tuple[str, ...] = ()
    privacy_pin: NodeSelector | None = None
    source: NodeSelector | None = None
    energy_budget_mj: float | None = None
    latency_ms: float | None = None
    max_partitions: int = 1
    reference_gflops: float = DEFAULT_REFERENCE_GFLOPS

    @classmethod
    def from_microservice(cls, ms: Microservice,
                          graph_stats: GraphStats | ModelGraph | Any) -> PlacementRequest:
        """The request of an SLA microservice; ``graph_stats`` is a :class:`GraphStats` or a
        ``ModelGraph`` (its stats are computed here).

        Oakestra ``direct`` constraints name nodes as ``"n1;n2"`` (``node`` field); several
        ``direct`` constraints add up. Their ``cluster`` field is the root's business.
        """
        stats = graph_stats if isinstance(graph_stats, GraphStats) else GraphStats.from_graph(graph_stats)
        ml = ms.ml_constraints
        direct: list[str] = []
        for constraint in ms.constraints_of("direct"):
            direct += [name.strip() for name in str(constraint.get("node") or "").split(";") if name.strip()]
        model = ms.model
        return cls(
            model_param_bytes=stats.model_param_bytes,
            min_stage_bytes=stats.min_stage_bytes,
            model_flops=stats.model_flops,
            input_bytes=stats.input_bytes,
            required_accelerators=("gpu",) if (ms.vgpus or 0) > 0 else (),
            min_battery_percent=ml.min_battery_percent,
            direct_nodes=tuple(dict.fromkeys(direct)),
            privacy_pin=ml.privacy_pin,
            source=model.source if model is not None else None,
            energy_budget_mj=ml.energy_mj,
            latency_ms=ml.latency_ms,
            max_partitions=model.max_partitions if model is not None else 1,
            allowed_archs=tuple(dict.fromkeys(spelling for arch in ms.raw.get("arch") or ()
                                              for spelling in spellings(str(arch)))),
        )
