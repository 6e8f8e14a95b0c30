"""Per-op cost model for planning: measured profiles first, a Neurosurgeon-style regression else.

- :class:`CostModel` (``from_profiles(graph, {device_class: ProfileResult|dict})``,
  ``op_ms(graph, device_class, speed_factor) -> (ms per op, "profile"|"regression")``);
- :func:`fit_regression` / :class:`RegressionModel` (per op type, non-negative, normalised to
  a reference device by speed factor);
- :func:`attribute` / :class:`OpTimes` (a profile keyed by ONNX node name onto ``graph.ops``,
  fused ops included);
- :func:`build_problem` (the :class:`~ml_scheduler.problem.PlanningProblem` the planners solve),
  :func:`stage_times`, :func:`prediction_error`.

Pure: numpy only, no I/O (profiles are measured by the node engines, stored at the root and
passed in by the cluster orchestrator).
"""

from ml_scheduler.costmodel.builder import build_problem, device_class_of, prediction_error, stage_times
from ml_scheduler.costmodel.model import SOURCE_PROFILE, SOURCE_REGRESSION, CostModel, MeasuredProfile
from ml_scheduler.costmodel.optimes import OpTimes, attribute, fusion_heads
from ml_scheduler.costmodel.regression import RegressionModel, Sample, fit_regression, samples_from_times

__all__ = [
    "SOURCE_PROFILE",
    "SOURCE_REGRESSION",
    "CostModel",
    "MeasuredProfile",
    "OpTimes",
    "RegressionModel",
    "Sample",
    "attribute",
    "build_problem",
    "device_class_of",
    "fit_regression",
    "fusion_heads",
    "prediction_error",
    "samples_from_times",
    "stage_times",
]
