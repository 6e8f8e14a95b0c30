"""The cluster orchestrator's state: nodes, deployments and a few settings.

Everything the cluster decides or observes that must survive a restart lives behind
:class:`ClusterStateStore` as JSON documents, so a restarted orchestrator resumes from
its store (level-triggered: desired state is read back, not remembered in memory).

Contract every backend MUST hold:
- node documents are keyed by ``node_id`` and unique by ``name`` (registration is
  idempotent by name: :meth:`find_node_by_name` then :meth:`put_node`);
- deployment writes are guarded by a version (Nomad-style plan apply): a writer passes the
  ``version`` it read and :meth:`put_deployment` raises :class:`Conflict` when somebody
  else wrote (or deleted) the document in between; ``expected_version=None`` writes blindly;
- documents handed out are copies: mutating them never changes the store.
"""

from __future__ import annotations

import copy
import logging
import threading
from abc import ABC, abstractmethod
from typing import Any

from treeline_common.errors import Conflict

log = logging.getLogger(__name__)

Doc = dict[str, Any]


class ClusterStateStore(ABC):
    """Persistent nodes, deployments and key/value settings of one cluster."""

    # ---------------------------------------------------------------- settings
    @abstractmethod
    def get_setting(self, key: str) -> Any | None:
        """The JSON value stored under ``key``, or None."""

    @abstractmethod
    def set_setting(self, key: str, value: Any) -> None:
        """Store a JSON value under ``key`` (overwrites)."""

    # ---------------------------------------------------------------- nodes
    @abstractmethod
    def put_node(self, doc: Doc) -> None:
        """Insert or replace the node ``doc["node_id"]``."""

    @abstractmethod
    def get_node(self, node_id: str) -> Doc | None:
        """The node document, or None."""

    @abstractmethod
    def find_node_by_name(self, name: str) -> Doc | None:
        """The node registered under ``name``, or None."""

    @abstractmethod
    def list_nodes(self) -> list[Doc]:
        """All node documents, ordered by name."""

    # ---------------------------------------------------------------- deployments
    @abstractmethod
    def put_deployment(self, doc: Doc, expected_version: int | None = None) -> Doc:
        """Write ``doc`` (keyed by ``deployment_id``) with ``version`` bumped; return the stored copy.

        With ``expected_version`` set, raise :class:`Conflict` unless the stored version
        equals it (``0`` means "must not exist yet").
        """

    @abstractmethod
    def get_deployment(self, deployment_id: str) -> Doc | None:
        """The deployment document, or None."""

    @abstractmethod
    def list_deployments(self) -> list[Doc]:
        """All deployment documents, ordered by id."""

    @abstractmethod
    def delete_deployment(self, deployment_id: str) -> bool:
        """Remove a deployment; True when it existed."""

    def close(self) -> None:
        """Release resources; optional to override, so not abstract (in-memory stores hold none)."""
        return None


def check_version(deployment_id: str, stored: Doc | None, expected: int | None) -> int:
    """The current version; raise Conflict when it is not the one the writer read."""
    current = int(stored.get("version", 0)) if stored else 0
    if expected is not None and current != expected:
        raise Conflict(
            f"deployment {deployment_id} changed meanwhile (version {current}, expected {expected})",
            [{"path": "version", "message": f"stale version {expected}, current {current}"}],
        )
    return current


class InMemoryClusterStateStore(ClusterStateStore):
    """Dict-backed twin of the SQLite store, for unit tests."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._settings: dict[str, Any] = {}
        self._nodes: dict[str, Doc] = {}
        self._deployments: dict[str, Doc] = {}

    def get_setting(self, key: str) -> Any | None:
        with self._lock:
            return copy.deepcopy(self._settings.get(key))

    def set_setting(self, key: str, value: Any) -> None:
        with self._lock:
            self._settings[key] = copy.deepcopy(value)

    def put_node(self, doc: Doc) -> None:
        with self._lock:
            for other in self._nodes.values():
                if other["name"] == doc["name"] and other["node_id"] != doc["node_id"]:
                    raise Conflict(f"node name {doc['name']!r} is taken by {other['node_id']}")
            self._nodes[doc["node_id"]] = copy.deepcopy(doc)

    def get_node(self, node_id: str) -> Doc | None:
        with self._lock:
            return copy.deepcopy(self._nodes.get(node_id))

    def find_node_by_name(self, name: str) -> Doc | None:
        with self._lock:
            for doc in self._nodes.values():
                if doc["name"] == name:
                    return copy.deepcopy(doc)
            return None

    def list_nodes(self) -> list[Doc]:
        with self._lock:
            return [copy.deepcopy(d) for d in sorted(self._nodes.values(), key=lambda d: d["name"])]

    def put_deployment(self, doc: Doc, expected_version: int | None = None) -> Doc:
        with self._lock:
            dep_id = doc["deployment_id"]
            current = check_version(dep_id, self._deployments.get(dep_id), expected_version)
            stored = copy.deepcopy(doc)
            stored["version"] = current + 1
            self._deployments[dep_id] = stored
            return copy.deepcopy(stored)

    def get_deployment(self, deployment_id: str) -> Doc | None:
        with self._lock:
            return copy.deepcopy(self._deployments.get(deployment_id))

    def list_deployments(self) -> list[Doc]:
        with self._lock:
            return [copy.deepcopy(self._deployments[k]) for k in sorted(self._deployments)]

    def delete_deployment(self, deployment_id: str) -> bool:
        with self._lock:
            return self._deployments.pop(deployment_id, None) is not None


_SCHEMA = """
CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, doc TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS nodes (node_id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE, doc TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS deployments (
    deployment_id TEXT PRIMARY KEY, version INTEGER NOT NULL, doc TEXT NOT NULL);
"""
