"""A federated job's trained model into the registry: a new version with its lineage.

The version is registered like an upload (artifact stored by digest, signature read from the
graph) and then gets, in one :class:`~treeline_common.registry.VersionUpdate`, its lineage
(parent = the version training started from; operation ``federated-training``; parameters: the
strategy and its parameters, rounds, clients, data selector, privacy, accuracy and loss per
round) and its metrics (``quality.accuracy`` on the held-out split; ``training.*``). The lineage
is checked as for a PATCH (the parent must exist; set once). From there it deploys or rolls out
like any other version.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from root_orchestrator.onnx_signature import extract_signature, load_onnx
from root_orchestrator.stores import Stores
from treeline_common.errors import InvalidInput
from treeline_common.registry import VersionUpdate

log = logging.getLogger(__name__)


def training_metrics(lineage: Mapping[str, Any], bytes_per_client_round: Mapping[str, list[int]],
                     dataset: str = "held-out") -> dict[str, dict[str, int | float | str]]:
    """Registry metrics of a result: the last round's accuracy and the traffic per client and round."""
    params = lineage.get("parameters") or {}
    accuracies = [a for a in params.get("accuracy_per_round") or [] if a is not None]
    sent = [b for per_client in bytes_per_client_round.values() for b in per_client]
    training: dict[str, int | float | str] = {
        "rounds": int(params.get("rounds") or 0), "clients": len(params.get("clients") or []),
        "strategy": str(params.get("strategy") or "")}
    if sent:  # none for a hierarchy's root part (its clients are clusters): not measured, not 0
        training["bytes_per_client_round"] = int(max(sent))
    metrics: dict[str, dict[str, int | float | str]] = {"training": training}
    if accuracies:
        metrics["quality"] = {"accuracy": float(accuracies[-1]), "dataset": dataset}
    return metrics


def register_result(stores: Stores, name: str, onnx_bytes: bytes, lineage: Mapping[str, Any],
                    metrics: Mapping[str, Mapping[str, int | float | str]], *, description: str = "",
                    owner: str | None = None, now: float = 0.0) -> dict[str, Any]:
    """Store ``onnx_bytes`` as a new version of ``name`` with ``lineage`` and ``metrics``; the version doc.

    InvalidInput naming ``body`` for bytes that are not ONNX, or the lineage/metrics field at fault
    (checked before anything is stored); NotFound (``lineage.parent``) when the parent is gone.
    """
    body = {"lineage": dict(lineage), "metrics": {k: dict(v) for k, v in metrics.items()}}
    update = VersionUpdate.from_body(body)
    problems = update.problems()
    if problems:
        raise InvalidInput("the training result's lineage or metrics are not valid", problems)
    parent = lineage["parent"]
    stores.models.get_version(str(parent["name"]), int(parent["version"]))  # NotFound before storing anything
    signature = extract_signature(load_onnx(onnx_bytes))
    stored = stores.artifacts.put(onnx_bytes)
    doc = stores.models.create_version(name, stored.sha256, stored.size, signature, description, fmt="onnx",
                                       created_at=now, owner=owner)
    doc = stores.models.update_version(name, int(doc["version"]), update)
    log.info("registered training result %s:%s (%s, parent %s:%s)", name, doc["version"], stored.sha256[:12],
             parent["name"], parent["version"])
    return doc
