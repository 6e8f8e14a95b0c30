"""Stores chosen by URI (MLflow-style): ``open_stores(url) -> Stores``.

Known schemes:

- ``mongodb://host:port/dbname`` / ``mongodb+srv://...``: MongoDB, artifacts in GridFS (db default
  ``treeline``): a real MongoDB, or the embedded wire-protocol server ``treeline up`` starts
  (:mod:`treeline_common.mongo_server`; ``python -m root_orchestrator`` run alone starts one of
  its own). One code path: the SQLite and mongomock backends are retired.

An unknown scheme fails at start-up with the list of known ones.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from root_orchestrator.stores.artifact_base import ArtifactStore
from root_orchestrator.stores.base import (
    ApplicationStore,
    ClusterStore,
    ModelRegistry,
    UserStore,
)
from treeline_common.errors import InvalidInput

if TYPE_CHECKING:  # pymongo is only imported when a MongoDB store is opened
    import pymongo

log = logging.getLogger(__name__)

__all__ = [
    "ApplicationStore",
    "ArtifactStore",
    "ClusterStore",
    "ModelRegistry",
    "Stores",
    "UserStore",
    "known_schemes",
    "open_stores",
]


@dataclass
class Stores:
    artifacts: ArtifactStore
    models: ModelRegistry
    applications: ApplicationStore
    clusters: ClusterStore
    users: UserStore
    url: str
    _close: Callable[[], None] = field(default=lambda: None, repr=False)

    def close(self) -> None:
        self._close()


def _mongo_stores(client: pymongo.MongoClient[dict[str, Any]], db_name: str, url: str) -> Stores:
    from root_orchestrator.stores.mongo import (
        MongoApplicationStore,
        MongoClusterStore,
        MongoModelRegistry,
        MongoUserStore,
        ensure_indexes,
    )
    from root_orchestrator.stores.mongo_artifacts import MongoArtifactStore

    db = client[db_name]
    ensure_indexes(db)
    return Stores(MongoArtifactStore(db), MongoModelRegistry(db), MongoApplicationStore(db),
                  MongoClusterStore(db), MongoUserStore(db), url, client.close)


def _db_name(url: str) -> str:
    return urlparse(url).path.lstrip("/").split("?")[0] or "treeline"


def _open_mongodb(url: str) -> Stores:
    import pymongo

    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(url, serverSelectionTimeoutMS=5000)
    return _mongo_stores(client, _db_name(url), url)


_OPENERS: dict[str, Callable[[str], Stores]] = {
    "mongodb": _open_mongodb,
    "mongodb+srv": _open_mongodb,
}


def known_schemes() -> list[str]:
    return sorted(_OPENERS)


def open_stores(url: str) -> Stores:
    """Open every root store on the backend ``url`` names (creates tables/indexes as needed)."""
    scheme = urlparse(url).scheme
    opener = _OPENERS.get(scheme)
    if opener is None:
        raise InvalidInput(f"unknown store URL scheme {scheme!r}; known: {', '.join(known_schemes())}",
                           [{"path": "store_url", "message": f"known schemes: {known_schemes()}"}])
    stores = opener(url)
    log.info("stores opened on %s backend", scheme)
    return stores
