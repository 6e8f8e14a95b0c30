"""The root's side of a confidence cascade: resolve the small model, fix the threshold.

When an instance of a service whose SLA has ``model.cascade`` is deployed (or re-sent: a
failover, a rollout), :func:`cascade_job` turns the block into the job's
:class:`~treeline_common.cascade.CascadeJob`: the small model resolved in the registry (name
and version or alias, like ``model.version``; its artifact must exist), and the threshold:
the SLA's, or, for ``accuracy_floor``, the one :func:`model_zoo.cascade_probes.calibrate_models`
picks on the probe set against the large model the instance deploys. The calibration's
figures (threshold, probe accuracy, expected escalated share) ride along to the cluster,
whose plan explanation shows them. A floor that not even the large model reaches on the
probe set is refused (400 naming ``model.cascade.accuracy_floor``), as is a calibration on a
root without scikit-learn (the ``export`` extra: give ``threshold`` instead).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from types import ModuleType
from typing import Any

from root_orchestrator.stores import Stores
from treeline_common.cascade import CascadeError, CascadeJob, CascadeSpec
from treeline_common.errors import InvalidInput, NotFound

log = logging.getLogger(__name__)


def _probes() -> ModuleType | None:
    """:mod:`model_zoo.cascade_probes`, or None without scikit-learn (the export extra). Imported
    here, not at the top: scikit-learn costs the root 1.4 s at start-up, and only a calibration
    needs it."""
    try:
        from model_zoo import cascade_probes
    except ImportError:
        return None
    return cascade_probes


def _invalid(path: str, message: str) -> InvalidInput:
    return InvalidInput(f"model.{path}: {message}", [{"path": f"model.{path}", "message": message}])


def cascade_job(stores: Stores, model: Any, large: Mapping[str, Any]) -> CascadeJob | None:
    """The job's cascade for the SLA ``model`` block (None without one); ``large``: the registry
    version the instance deploys. InvalidInput / NotFound name the ``model.cascade`` field."""
    if not isinstance(model, Mapping):
        return None
    try:
        spec = CascadeSpec.from_sla(model)
    except CascadeError as exc:
        raise _invalid(exc.path, exc.message) from None
    if spec is None:
        return None
    try:
        small = stores.models.get_version(spec.small_name, spec.small_version)
    except NotFound as exc:
        raise NotFound(f"cascade.small: {exc.message}",
                       [{"path": "model.cascade.small", "message": exc.message}]) from None
    if not stores.artifacts.exists(str(small["sha256"])):
        raise NotFound(f"artifact of model {small['name']} v{small['version']} is missing",
                       [{"path": "model.cascade.small", "message": f"no artifact {small['sha256']}"}])
    threshold, calibration = spec.threshold, None
    if threshold is None:
        assert spec.accuracy_floor is not None  # from_sla: exactly one of the two
        calibration = _calibrate(stores, spec, str(small["sha256"]), str(large["sha256"]))
        threshold = float(calibration["threshold"])
    return CascadeJob(small_name=str(small["name"]), small_version=int(small["version"]),
                      small_sha256=str(small["sha256"]), threshold=threshold, confidence=spec.confidence,
                      edge=spec.edge, calibration=calibration)


def _calibrate(stores: Stores, spec: CascadeSpec, small_sha: str, large_sha: str) -> dict[str, Any]:
    """The calibration's figures for ``spec.accuracy_floor`` (module docstring)."""
    assert spec.accuracy_floor is not None
    cascade_probes = _probes()
    if cascade_probes is None:
        raise _invalid("cascade.accuracy_floor", "calibration needs scikit-learn at the root (the export "
                       "extra); give cascade.threshold instead")
    try:
        probe = cascade_probes.probe_set(spec.probe)
        small, large = stores.artifacts.get(small_sha), stores.artifacts.get(large_sha)
        result = cascade_probes.calibrate_models(small, large, probe, spec.accuracy_floor, spec.confidence)
    except ImportError as exc:
        raise _invalid("cascade.probe", f"probe set {spec.probe!r} is not available here: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - onnxruntime and shape errors have no common base
        raise _invalid("cascade.probe", f"the models cannot run on probe set {spec.probe!r}: {exc}") from None
    if not result.met:
        raise _invalid("cascade.accuracy_floor", f"{spec.accuracy_floor} is not reached on the {spec.probe} "
                       f"probe set: the large model alone scores {result.large_accuracy:.4f}")
    figures: dict[str, Any] = {**result.to_dict(), "probe": spec.probe}
    log.info("cascade %s: threshold %.4f for accuracy floor %.3f (probe accuracy %.4f, %.1f %% escalated)",
             spec.small_name, result.threshold, spec.accuracy_floor, result.accuracy,
             100.0 * result.escalated_share)
    return figures
