"""The secrets one stack hands its children: a cluster token and a join token per cluster.

They are made once per data directory and kept in ``<data_dir>/stack_secrets.json`` (0600), so a
stack started again on the same data directory keeps its clusters' identities at the root.
Cluster 1's pair is the file's ``cluster_token`` / ``join_token`` (the whole file of a one-cluster
stack); clusters 2..N each have their own pair under ``more_clusters``, made when first needed.

One pair per cluster, not one for all: the root binds a cluster name to the identity that first
registered it, and a pre-seeded token is one identity, so with a shared token any cluster of the
stack could push for another; with its own token cluster 2 cannot, and a node holding cluster 1's
join token cannot join cluster 2.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cluster_orchestrator.nodes import new_join_token
from root_orchestrator.auth.settings import new_cluster_token
from treeline_common.mqtt_acl import write_private

SECRETS_FILE = "stack_secrets.json"


def stack_secrets(data_dir: Path) -> tuple[str, str]:
    """``(cluster token, join token)`` of cluster 1 of the stack on ``data_dir`` (see the module)."""
    return cluster_secrets(data_dir, 1)[0]


def cluster_secrets(data_dir: Path, count: int) -> list[tuple[str, str]]:
    """``(cluster token, join token)`` of each of ``count`` clusters, cluster 1 first: the stored
    ones, and fresh ones (then stored) for clusters the file does not have yet."""
    path = data_dir / SECRETS_FILE
    stored = _read(path)
    pairs: list[tuple[str, str]] = []
    first = _pair(stored)
    if first is not None:  # without cluster 1's pair the file is not ours: start afresh
        more = stored.get("more_clusters")
        pairs = [first, *(p for m in (more if isinstance(more, list) else []) if (p := _pair(m)))]
    if len(pairs) >= count:
        return pairs[:count]
    while len(pairs) < count:
        pairs.append((new_cluster_token(), new_join_token()[0]))
    document: dict[str, Any] = {"cluster_token": pairs[0][0], "join_token": pairs[0][1]}
    if len(pairs) > 1:
        document["more_clusters"] = [{"cluster_token": c, "join_token": j} for c, j in pairs[1:]]
    write_private(path, json.dumps(document))
    return pairs


def _read(path: Path) -> dict[str, Any]:
    try:
        stored = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError):
        return {}
    return stored if isinstance(stored, dict) else {}


def _pair(entry: Any) -> tuple[str, str] | None:
    if isinstance(entry, dict) and entry.get("cluster_token") and entry.get("join_token"):
        return str(entry["cluster_token"]), str(entry["join_token"])
    return None
