"""The secrets one stack hands its children: the cluster token and the join token.

They are made once per data directory and kept in ``<data_dir>/stack_secrets.json`` (0600), so a
stack started again on the same data directory keeps its cluster's identity at the root.
"""

from __future__ import annotations

import json
from pathlib import Path

from cluster_orchestrator.nodes import new_join_token
from root_orchestrator.auth.settings import new_cluster_token
from treeline_common.mqtt_acl import write_private


def stack_secrets(data_dir: Path) -> tuple[str, str]:
    """``(cluster token, join token)`` of the stack on ``data_dir``: made once, then kept in
    ``<data_dir>/stack_secrets.json`` (0600) so a restart keeps the cluster's identity at the root."""
    path = data_dir / "stack_secrets.json"
    try:
        stored = json.loads(path.read_text())
        if isinstance(stored, dict) and stored.get("cluster_token") and stored.get("join_token"):
            return str(stored["cluster_token"]), str(stored["join_token"])
    except (OSError, ValueError):
        pass
    secrets = {"cluster_token": new_cluster_token(), "join_token": new_join_token()[0]}
    write_private(path, json.dumps(secrets))
    return secrets["cluster_token"], secrets["join_token"]
