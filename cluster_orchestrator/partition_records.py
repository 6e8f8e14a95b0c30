"""Partitions as children of a model version: after publishing a plan's partitions, the cluster
tells the root which version each was cut from (``PUT /api/models/<name>/versions/<v>/partitions/
<sha256>`` with a :class:`~treeline_common.registry.PartitionRecord`).

Best effort by contract: the registry's record is bookkeeping, not part of bringing a deployment
up, so a root that is down or refuses logs one line and the deployment goes on.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from treeline_common.errors import TreelineError
from treeline_common.registry import PartitionRecord

log = logging.getLogger(__name__)


class PartitionSink(Protocol):
    def put_partition(self, name: str, version: Any, sha256: str, record: dict[str, Any]) -> None: ...


def partition_records(deployment_id: str, partitions: Sequence[Any],
                      predicted: Mapping[str, Any]) -> list[tuple[str, PartitionRecord]]:
    """``(sha256, record)`` per partition (an ``ml_scheduler.extract.Partition``), in stage order;
    ``ops`` from the plan's predicted stages (``{index, start, end}``) when it has them. Pure."""
    ranges = {int(s["index"]): (int(s["start"]), int(s["end"])) for s in predicted.get("stages") or []
              if isinstance(s, Mapping) and {"index", "start", "end"} <= set(s)}
    return [(str(p.sha256), PartitionRecord(deployment_id=deployment_id, stage=int(p.index),
                                            flops=int(p.flops), param_bytes=int(p.param_bytes),
                                            cut_bytes=int(p.cut_bytes), ops=ranges.get(int(p.index))))
            for p in partitions]


def record_partitions(root: PartitionSink, name: str, version: Any, deployment_id: str,
                      partitions: Sequence[Any], predicted: Mapping[str, Any]) -> int:
    """Record every partition at the root; returns how many were recorded. Never raises for the
    root's answer: a failure is logged and the rest are skipped (the root is likely down)."""
    if not name or version is None:
        return 0
    done = 0
    for sha256, record in partition_records(deployment_id, partitions, predicted):
        try:
            root.put_partition(name, version, sha256, record.to_dict())
        except TreelineError as exc:
            log.info("partitions of %s:%s not recorded at the root: %s", name, version, exc.message)
            break
        done += 1
    return done
