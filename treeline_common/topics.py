"""MQTT topic names between a cluster orchestrator and its node engines.

Oakestra-compatible where Oakestra has a topic (``information``, ``job``, ``control/deploy``,
``control/delete``); Treeline adds the retained ``status`` topic carrying the last will.
Both sides build topic strings only through these functions.
"""

from __future__ import annotations

PREFIX = "nodes"


def information(node_id: str) -> str:
    """Node -> cluster telemetry, published every telemetry interval (default 2 s)."""
    return f"{PREFIX}/{node_id}/information"


def status(node_id: str) -> str:
    """Node -> cluster retained liveness (``online`` birth / ``offline`` last will)."""
    return f"{PREFIX}/{node_id}/status"


def job(node_id: str) -> str:
    """Node -> cluster stage state changes (DOWNLOADING, READY, FAILED, ...)."""
    return f"{PREFIX}/{node_id}/job"


def job_resources(node_id: str) -> str:
    """Node -> cluster per-stage statistics (requests served, mean compute ms)."""
    return f"{PREFIX}/{node_id}/jobs/resources"


def control_deploy(node_id: str) -> str:
    """Cluster -> node: load a partition and serve it as a pipeline stage."""
    return f"{PREFIX}/{node_id}/control/deploy"


def control_delete(node_id: str) -> str:
    """Cluster -> node: stop serving a stage (or every stage of a deployment)."""
    return f"{PREFIX}/{node_id}/control/delete"


def control_profile(node_id: str) -> str:
    """Cluster -> node: measure a model's per-op times with the node's real runtime."""
    return f"{PREFIX}/{node_id}/control/profile"


def profile_result(node_id: str) -> str:
    """Node -> cluster: the measured per-op times (answer to ``control/profile``)."""
    return f"{PREFIX}/{node_id}/profile"


def control_train(node_id: str) -> str:
    """Cluster -> node: start or stop a Flower server/client of a training job (treeline_common.training)."""
    return f"{PREFIX}/{node_id}/control/train"


def training(node_id: str) -> str:
    """Node -> cluster: a training job's state and per-round progress (treeline_common.training)."""
    return f"{PREFIX}/{node_id}/training"


# Wildcard subscriptions used by the cluster orchestrator.
ALL_INFORMATION = f"{PREFIX}/+/information"
ALL_STATUS = f"{PREFIX}/+/status"
ALL_JOB = f"{PREFIX}/+/job"
ALL_JOB_RESOURCES = f"{PREFIX}/+/jobs/resources"
ALL_PROFILE_RESULTS = f"{PREFIX}/+/profile"
ALL_TRAINING = f"{PREFIX}/+/training"


def node_id_of(topic: str) -> str:
    """Return the node id in a ``nodes/<id>/...`` topic; raise ValueError otherwise."""
    parts = topic.split("/")
    if len(parts) < 3 or parts[0] != PREFIX or not parts[1]:
        raise ValueError(f"not a node topic: {topic!r}")
    return parts[1]
