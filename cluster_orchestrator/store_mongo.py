"""The cluster's state on MongoDB (a real one, or the embedded wire server ``treeline up`` starts),
and the factory that picks a cluster store by URL.

Same contract as every :class:`~cluster_orchestrator.store.ClusterStateStore`. Layout, one
database per cluster:

- ``settings``: ``{_id: key, json}``;
- ``nodes``: ``{_id: node_id, name, json}`` with a unique index on ``name`` (a name taken by
  another node id is refused by the database itself: :class:`Conflict`);
- ``deployments``: ``{_id: deployment_id, version, json}``; the stored document's ``version`` is
  the top-level field, written by the same single-document operation as the body, so the
  compare-and-set is ``find_one_and_update({_id, version: expected}, ...)`` (Nomad-style plan
  apply) and ``expected_version=0`` is an insert that the ``_id`` makes unique.

Bodies are kept as JSON text, not as BSON sub-documents: documents then read back exactly as the
SQLite store returned them (JSON semantics: tuples become lists, keys strings) and field names
with ``.`` or ``$`` (ONNX tensor names) need no escaping.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pymongo
from pymongo import ASCENDING, ReturnDocument
from pymongo.database import Database
from pymongo.errors import DuplicateKeyError

from cluster_orchestrator.store import ClusterStateStore, Doc, check_version
from treeline_common.errors import Conflict, InvalidInput

log = logging.getLogger(__name__)

DEFAULT_DB = "treeline_cluster"


def _dumps(doc: Any) -> str:
    return json.dumps(doc, separators=(",", ":"))


class MongoClusterStateStore(ClusterStateStore):
    """A cluster's nodes, deployments and settings in one MongoDB database (see the module doc).

    The constructor does no I/O; :meth:`ensure_indexes` (called by :func:`open_cluster_store`)
    creates the unique node-name index. pymongo's client is thread-safe: no lock here.
    """

    def __init__(self, db: Database[Any], client: pymongo.MongoClient[Any] | None = None) -> None:
        self.db = db
        self._client = client  # closed by close() when this store owns it

    def ensure_indexes(self) -> None:
        """Idempotent."""
        self.db.nodes.create_index([("name", ASCENDING)], unique=True)

    def get_setting(self, key: str) -> Any | None:
        found = self.db.settings.find_one({"_id": key})
        return json.loads(found["json"]) if found else None

    def set_setting(self, key: str, value: Any) -> None:
        self.db.settings.update_one({"_id": key}, {"$set": {"json": _dumps(value)}}, upsert=True)

    def put_node(self, doc: Doc) -> None:
        node_id, name = doc["node_id"], doc["name"]
        try:
            self.db.nodes.update_one({"_id": node_id}, {"$set": {"name": name, "json": _dumps(doc)}},
                                     upsert=True)
        except DuplicateKeyError:
            raise Conflict(f"node name {name!r} is taken by another node") from None

    def get_node(self, node_id: str) -> Doc | None:
        found = self.db.nodes.find_one({"_id": node_id})
        return json.loads(found["json"]) if found else None

    def find_node_by_name(self, name: str) -> Doc | None:
        found = self.db.nodes.find_one({"name": name})
        return json.loads(found["json"]) if found else None

    def list_nodes(self) -> list[Doc]:
        return [json.loads(d["json"]) for d in self.db.nodes.find().sort("name", ASCENDING)]

    def put_deployment(self, doc: Doc, expected_version: int | None = None) -> Doc:
        dep_id = doc["deployment_id"]
        body = {k: v for k, v in doc.items() if k != "version"}
        text = _dumps(body)
        stored: dict[str, Any] | None
        if expected_version is None:  # blind write: bump whatever is there
            stored = self.db.deployments.find_one_and_update(
                {"_id": dep_id}, {"$inc": {"version": 1}, "$set": {"json": text}}, upsert=True,
                return_document=ReturnDocument.AFTER)
        elif expected_version == 0:  # must not exist yet: the _id makes the insert unique
            try:
                self.db.deployments.insert_one({"_id": dep_id, "version": 1, "json": text})
                stored = {"version": 1, "json": text}
            except DuplicateKeyError:
                stored = None
        else:
            stored = self.db.deployments.find_one_and_update(
                {"_id": dep_id, "version": expected_version},
                {"$set": {"json": text, "version": expected_version + 1}},
                return_document=ReturnDocument.AFTER)
        if stored is None:
            current = self.db.deployments.find_one({"_id": dep_id}, {"version": True})
            check_version(dep_id, current, expected_version)
            raise Conflict(f"deployment {dep_id} changed meanwhile",  # it changed back: still a lost race
                           [{"path": "version", "message": f"stale version {expected_version}"}])
        return {**json.loads(stored["json"]), "version": int(stored["version"])}

    def get_deployment(self, deployment_id: str) -> Doc | None:
        found = self.db.deployments.find_one({"_id": deployment_id})
        return {**json.loads(found["json"]), "version": int(found["version"])} if found else None

    def list_deployments(self) -> list[Doc]:
        return [{**json.loads(d["json"]), "version": int(d["version"])}
                for d in self.db.deployments.find().sort("_id", ASCENDING)]

    def delete_deployment(self, deployment_id: str) -> bool:
        return self.db.deployments.delete_one({"_id": deployment_id}).deleted_count > 0

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


def known_schemes() -> list[str]:
    return ["mongodb", "mongodb+srv"]


def open_cluster_store(url: str, data_dir: str | Path = "") -> ClusterStateStore:
    """The cluster store ``url`` names: ``mongodb://host:port/<db>`` (database default
    ``treeline_cluster``): a real MongoDB or the embedded wire server (``treeline up``'s, or the one
    a cluster run alone starts: :class:`cluster_orchestrator.app.ClusterRuntime`). Raises
    InvalidInput (path ``store_url``) on an unknown scheme, naming the known ones. ``data_dir`` is
    not used (kept for callers that pass it)."""
    parsed = urlparse(url)
    if parsed.scheme in ("mongodb", "mongodb+srv"):
        client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(url, serverSelectionTimeoutMS=5000)
        name = parsed.path.lstrip("/") or DEFAULT_DB
        store = MongoClusterStateStore(client[name], client)
        store.ensure_indexes()
        log.info("cluster store on MongoDB database %s", name)
        return store
    known = ", ".join(known_schemes())
    raise InvalidInput(f"unknown cluster store URL scheme {parsed.scheme!r}; known: {known}",
                       [{"path": "store_url", "message": f"known schemes: {known_schemes()}"}])
