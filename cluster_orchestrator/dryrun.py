"""Operator requests the cluster serves without deploying: a dry-run plan, a profile re-measure.

**Plan** (``POST /api/plan``, body a :class:`~treeline_common.jobs.JobRequest`): the decide
step of a deployment and nothing after it (a training job's: its placement,
:func:`training_summary`). The model is fetched (through the orchestrator's
:class:`~cluster_orchestrator.deployer.ModelCache`, so a later real deployment does not download
it again; its bytes land in the cluster's artifact cache as the deployer's would, since nodes
fetch the model there), the nodes are snapshotted, the cost model is built from the profiles the root keeps
*only* (a device class without one is predicted by the regression fallback: a dry run sends no
ProfileCommand) and :func:`cluster_orchestrator.planning.plan` runs the ML scheduler. No
partition is published, no command is sent, no deployment is recorded. The answer is the plan
summary (:func:`plan_summary`); an unschedulable plan is a result with reasons per node name.

**Re-measure** (``POST /api/models/profile``): one online node per device class (or of the one
class asked for) times the model's ops again, in a background thread, and the results are PUT
to the root like a deployment's profiles are (:mod:`cluster_orchestrator.profiler`). The
request is answered at once (202) with the classes and nodes asked; a class whose node does not
answer in ``profile_timeout`` stays without profile, and the next deployment measures it.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import threading
from collections.abc import Callable, Mapping
from typing import Any, cast

from cluster_orchestrator import planning
from cluster_orchestrator.models import declared_shapes, profiles_for
from cluster_orchestrator.orchestrator import ClusterOrchestrator
from cluster_orchestrator.profiler import classes_to_profile
from cluster_orchestrator.training import place_training, requirements_of
from deployment_descriptors import load_profile
from ml_scheduler.binding import BindingError
from ml_scheduler.costmodel import CostModel
from treeline_common.errors import (
    IntegrityError,
    InvalidInput,
    NotFound,
    TreelineError,
    Unavailable,
    Unschedulable,
)
from treeline_common.jobs import JobRequest

log = logging.getLogger(__name__)

SHA256_RE = re.compile(r"^[0-9a-fA-F]{64}$")
DEVICE_CLASS_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
DRYRUN_DEPLOYMENT = "dryrun"


def parse_plan_job(body: Any) -> JobRequest:
    """The JobRequest of a plan request; InvalidInput names every bad field (as a deploy does),
    declared model inputs that disagree with the job's model signature included."""
    if isinstance(body, Mapping) and body.get("training") is not None:  # as a deployment reads one
        return JobRequest.from_dict(dict(body))  # (cluster_orchestrator.jobs): no model block to check
    job = planning.parse_job_body(body)
    planning.check_job_inputs(job)
    return job


def training_summary(core: ClusterOrchestrator, job: JobRequest) -> dict[str, Any]:
    """The dry run of a training job: :func:`~cluster_orchestrator.training.place_training` over the
    nodes now, exactly as the training worker will place it (no model is fetched, nothing sent).

    ``{schedulable, strategy: "federated <strategy>", message, predicted: {}, stages: [],
    reasons: {node name: "code: message"}, training: {server, clients, rejected: [{node_id,
    node_name, reason, message}], unschedulable, field, rounds, min_clients, data}}`` (node
    names beside the ids); ``message``/``field`` name the SLA field when it cannot be scheduled.
    """
    spec = job.training
    if spec is None:
        raise ValueError("training_summary needs a training job")
    nodes = core.nodes.list_nodes()
    placement = place_training(planning.build_snapshot(nodes), spec, requirements_of(job.microservice))
    names = {str(n["node_id"]): str(n.get("name") or n["node_id"]) for n in nodes}
    explanation = placement.explanation()
    explanation["rejected"] = [dict(r, node_name=names.get(r["node_id"], r["node_id"]))
                               for r in explanation["rejected"]]
    explanation.update(server_name=names.get(placement.server, placement.server),
                       client_names=sorted(names.get(c, c) for c in placement.clients),
                       rounds=spec.rounds, min_clients=spec.min_clients, data=spec.data)
    log.info("dry run of training %s: %s", job.service_id, placement.unschedulable or "schedulable")
    return {"schedulable": not placement.unschedulable, "strategy": f"federated {spec.strategy}",
            "message": placement.unschedulable, "predicted": {}, "stages": [],
            "reasons": {names.get(n, n): f"{code}: {text}" for n, (code, text) in placement.rejected.items()},
            "training": explanation}


def plan_summary(core: ClusterOrchestrator, job: JobRequest) -> dict[str, Any]:
    """Decide where ``job`` would run now, without deploying anything (see the module docstring).

    ``{schedulable, strategy, message, predicted, stages: [{index, node_name, node_id, flops,
    param_bytes, cut_bytes, predicted_compute_ms, predicted_transfer_in_ms}], relay_node_name,
    reasons: {node name: reason}, profiles: {stored: [class], missing: [class]}}``; a training
    job's is :func:`training_summary`.
    """
    if job.training is not None:
        return training_summary(core, job)
    spec = planning.job_spec(job, core.config.root_url)

    def model_bytes() -> bytes:
        # as the deployer loads it: the parsed-model cache is shared, so a model first loaded
        # here must land in the cluster's artifact cache too, where nodes fetch it
        return core.artifacts.fetch(spec.model_sha256,
                                    lambda: core.root.download(spec.model_url, spec.model_sha256))

    try:
        loaded = core.models.get(spec.model_sha256, model_bytes, declared_shapes(spec.input_specs))
    except BindingError as exc:
        raise InvalidInput(f"the SLA's input shapes do not fit the model: {exc}",
                           [{"path": f"microservice.model.{exc.path}", "message": exc.message}]) from None
    except (NotFound, IntegrityError) as exc:  # the root answered: the job names a model it lacks
        raise InvalidInput(f"model download: {exc.message}",
                           [{"path": "model.sha256", "message": exc.message}]) from None
    except TreelineError as exc:  # the root cannot be reached now
        raise Unavailable(f"model download: {exc.message}", exc.details) from None
    except Exception as exc:  # noqa: BLE001 - onnx parse errors have no common base
        raise InvalidInput(f"model {spec.model_sha256} is not valid ONNX: {exc}",
                           [{"path": "model.sha256", "message": "not a valid ONNX model"}]) from None
    nodes = core.nodes.list_nodes()
    stored: dict[str, dict[str, Any]] = {}
    try:
        stored = profiles_for(loaded, core.root.model_profiles(spec.model_name, spec.model_version))
    except TreelineError as exc:
        log.warning("dry run: no stored profiles of %s v%s: %s", spec.model_name, spec.model_version, exc)
    model, graph = loaded.model, loaded.graph
    outcome = planning.plan(model, graph, nodes, spec.microservice,
                            load_profile(spec.microservice.model.scheduler_profile),
                            CostModel.from_profiles(graph, stored))
    names = {str(n["node_id"]): str(n.get("name") or n["node_id"]) for n in nodes}
    classes = {str(n.get("device_class") or n.get("profile") or "") for n in nodes if n.get("online")} - {""}
    summary: dict[str, Any] = {
        "schedulable": outcome.schedulable, "strategy": outcome.strategy, "message": outcome.message,
        "predicted": {k: v for k, v in (outcome.predicted or {}).items() if k != "stages"},
        "stages": [], "relay_node_name": None,
        "reasons": {names.get(k, k): v for k, v in outcome.reasons.items()},
        "profiles": {"stored": sorted(classes & set(stored)), "missing": sorted(classes - set(stored))},
    }
    if outcome.schedulable:
        placement = planning.build_placement(
            DRYRUN_DEPLOYMENT, 0, outcome.strategy,
            planning.input_specs_for(spec, outcome.input_names, model),
            spec.output_names or outcome.output_names, outcome.partitions, outcome.node_ids,
            {str(n["node_id"]): n for n in nodes}, outcome.predicted, outcome.relay_node_id)
        summary["stages"] = [
            {"index": s.index, "node_name": s.node_name, "node_id": s.node_id, "flops": s.flops,
             "param_bytes": s.param_bytes, "cut_bytes": s.cut_bytes,
             "predicted_compute_ms": s.predicted_compute_ms,
             "predicted_transfer_in_ms": s.predicted_transfer_in_ms} for s in placement.stages]
        summary["relay_node_name"] = placement.relay.node_name if placement.relay else None
    log.info("dry run of %s (%s v%s): %s", job.service_id, spec.model_name, spec.model_version,
             "schedulable" if outcome.schedulable else "unschedulable")
    return summary


def parse_profile_request(body: Any) -> tuple[str, int, str, str | None]:
    """``(name, version, sha256, device_class)`` of a re-measure request, or InvalidInput."""
    if not isinstance(body, Mapping):
        raise InvalidInput("invalid profile request", [{"path": "", "message": "must be a JSON object"}])
    errors = []
    name, version, sha256 = body.get("name"), body.get("version"), body.get("sha256")
    device_class = body.get("device_class")
    if not isinstance(name, str) or not name:
        errors.append({"path": "name", "message": "must be a non-empty string"})
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        errors.append({"path": "version", "message": "must be an integer >= 1"})
    if not isinstance(sha256, str) or not SHA256_RE.match(sha256):
        errors.append({"path": "sha256", "message": "must be 64 hex digits"})
    if device_class is not None and (not isinstance(device_class, str)
                                     or not DEVICE_CLASS_RE.match(device_class)):
        errors.append({"path": "device_class", "message": f"must be null or match {DEVICE_CLASS_RE.pattern}"})
    if errors:
        raise InvalidInput("invalid profile request", errors)
    return str(name), cast(int, version), str(sha256).lower(), device_class


def start_remeasure(core: ClusterOrchestrator, body: Any,
                    publish: Callable[[str, Any], None]) -> dict[str, Any]:
    """Pick one online node per class (of ``device_class``, or every class) and measure in a
    background thread; Unschedulable when no online node has the class. Returns at once
    ``{name, version, device_classes, nodes: {class: node name}}``."""
    name, version, sha256, device_class = parse_profile_request(body)
    chosen = classes_to_profile(core.nodes.list_nodes(), set())
    if device_class is not None:
        chosen = {k: v for k, v in chosen.items() if k == device_class}
    if not chosen:
        what = f"of device class {device_class!r}" if device_class else "at all"
        raise Unschedulable(f"no online node {what} in cluster {core.config.name}",
                            [{"path": "device_class", "message": f"no online node {what}"}])
    # nodes fetch the model from this cluster's cache, with their join token, as for a deployment
    root_url = planning.artifact_url(core.config.root_url, sha256)
    url = planning.artifact_url(core.config.public_url or core.config.root_url, sha256)

    def measure() -> None:
        try:
            core.artifacts.fetch(sha256, lambda: core.root.download(root_url, sha256))
            results = core.profiles.collect(publish, chosen, url, sha256, core.config.profile_timeout,
                                            threading.Event())
        except Exception:  # a background thread: log, never die silently
            log.exception("re-measuring %s v%s failed", name, version)
            return
        for cls, result in results.items():
            try:
                core.root.put_model_profile(name, version, cls, dataclasses.asdict(result))
            except TreelineError as exc:
                log.warning("could not store the re-measured %s profile of %s v%s: %s", cls, name, version,
                            exc)
        log.info("re-measured %s v%s: %s of %s", name, version, sorted(results), sorted(chosen))

    threading.Thread(target=measure, name=f"remeasure-{name}-{version}", daemon=True).start()
    return {"name": name, "version": version, "device_classes": sorted(chosen),
            "nodes": {cls: node_name for cls, (_, node_name) in sorted(chosen.items())}}
