"""The root's store on MongoDB: pymongo collections, artifacts in GridFS.

It runs against a real MongoDB and against the embedded wire-protocol server ``treeline up``
starts (``nx-27017``, :mod:`treeline_common.mongo_server`); every operation here is one both
answer the same way. Two of the embedded server's gaps shape the code: an upsert by
``find_one_and_update`` ignores ``$setOnInsert`` and an upserting ``replace_one`` ignores the
filter's ``_id`` (so both are written as ``update_one(upsert)`` / an explicit ``_id``), and a
reply over 48 MB fails (so GridFS files are read in bounded chunk ranges,
:mod:`~root_orchestrator.stores.gridfs_reader`). No sessions or transactions are needed:
atomicity comes from single-document operations: version numbers from a counter
(``find_one_and_update`` + ``$inc`` + upsert) backed by a unique ``(name, version)`` index,
aliases as one ``$set`` on the model document, optimistic service updates filtered on
``revision``. GridFS files use the sha256 as ``_id``, so a duplicate put is detected by the
database itself.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from pymongo import ASCENDING, DESCENDING, ReturnDocument
from pymongo.database import Database
from pymongo.errors import DuplicateKeyError

from root_orchestrator.stores.base import (
    APPLICATION_KEPT_FIELDS,
    USER_FIELDS,
    ApplicationStore,
    ClusterStore,
    ModelRegistry,
    UserStore,
    check_alias,
    model_taken,
    new_cluster_doc,
    new_cluster_token_doc,
    new_id,
    new_user_doc,
    not_found,
    parse_ref,
    resolve_version,
    username_taken,
    with_aliases,
)
from root_orchestrator.stores.mongo_registry import MongoRegistryLifecycle, ensure_lifecycle_indexes
from root_orchestrator.variants import VARIANT_TAG
from treeline_common.errors import Conflict

log = logging.getLogger(__name__)

_NO_ID = {"_id": False}


def ensure_indexes(db: Database) -> None:
    """Idempotent; called by the factory, not by constructors (which do no I/O)."""
    db.model_versions.create_index([("name", ASCENDING), ("version", ASCENDING)], unique=True)
    db.services.create_index([("application_id", ASCENDING)])
    db.applications.create_index([("userId", ASCENDING), ("application_name", ASCENDING)])
    db.clusters.create_index([("cluster_name", ASCENDING)], unique=True)
    db.model_profiles.create_index([("name", ASCENDING), ("version", ASCENDING)])
    db.users.create_index([("username", ASCENDING)], unique=True)
    ensure_lifecycle_indexes(db)


class MongoModelRegistry(MongoRegistryLifecycle, ModelRegistry):
    """Versions, aliases and profiles; the lifecycle (metadata, compare-and-set aliases, version
    delete, partitions) is :class:`~root_orchestrator.stores.mongo_registry.MongoRegistryLifecycle`."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def create_version(self, name: str, sha256: str, size: int, signature: dict[str, Any],
                       description: str = "", *, fmt: str = "onnx",
                       created_at: float = 0.0, owner: str | None = None) -> dict[str, Any]:
        # The model document first (its owner set once, atomically, by the upsert that creates it),
        # so a version is never numbered under another user's model.
        self.db.models.update_one(
            {"_id": name}, {"$setOnInsert": {"aliases": {}, "last_version": 0, "owner": owner or ""}},
            upsert=True)
        model = self.db.models.find_one({"_id": name})
        if model is not None and owner is not None and model.get("owner", "") != owner:
            raise model_taken(name)
        counter = self.db.counters.find_one_and_update(
            {"_id": f"model:{name}"}, {"$inc": {"v": 1}}, upsert=True, return_document=ReturnDocument.AFTER)
        if counter is None:  # cannot happen: an upsert returning the document AFTER always has one
            raise RuntimeError(f"version counter of model {name!r} was not created")
        version = int(counter["v"])
        doc = {"name": name, "version": version, "sha256": sha256, "size": size, "format": fmt,
               "signature": signature, "created_at": created_at, "description": description,
               "tags": {}, "metrics": {}, "lineage": None, "rev": 0}
        self.db.model_versions.insert_one(dict(doc))
        # last_version only moves forward even if two creates finish out of order.
        self.db.models.update_one({"_id": name}, {"$max": {"last_version": version},
                                                  "$setOnInsert": {"aliases": {}, "owner": owner or ""}},
                                  upsert=True)
        _, aliases, model_owner = self._model(name)
        return with_aliases(doc, aliases, model_owner)

    def _model(self, name: str) -> tuple[int, dict[str, int], str]:
        model = self.db.models.find_one({"_id": name})
        if model is None:
            raise not_found("model", name, "model.name")
        return int(model["last_version"]), dict(model.get("aliases") or {}), str(model.get("owner") or "")

    def get_version(self, name: str, ref: int | str) -> dict[str, Any]:
        ref = parse_ref(ref)
        last, aliases, owner = self._model(name)
        if ref == "latest":
            return with_aliases(self._latest(name), aliases, owner)
        version = resolve_version(name, ref, last, aliases)
        doc = self.db.model_versions.find_one({"name": name, "version": version}, _NO_ID)
        if doc is None:
            raise not_found("version", f"{name}:{ref}", "model.version")
        return with_aliases(doc, aliases, owner)

    def _latest(self, name: str) -> dict[str, Any]:
        """``latest``: the newest version that is not an optimised variant of another (tag
        ``optimize.variant``, :mod:`root_orchestrator.variants`), else the newest version."""
        newest: dict[str, Any] | None = None
        for doc in self.db.model_versions.find({"name": name}, _NO_ID).sort("version", DESCENDING):
            newest = newest or doc
            if not (doc.get("tags") or {}).get(VARIANT_TAG):
                return dict(doc)
        if newest is None:
            raise not_found("version", f"{name}:latest", "model.version")
        return dict(newest)

    def list_versions(self, name: str) -> list[dict[str, Any]]:
        _, aliases, owner = self._model(name)
        docs = self.db.model_versions.find({"name": name}, _NO_ID).sort("version", ASCENDING)
        return [with_aliases(d, aliases, owner) for d in docs]

    def list_models(self) -> list[dict[str, Any]]:
        # A model whose first version is still being written (last_version 0) is not listed yet.
        return [{"name": m["_id"], "latest_version": int(self._latest(str(m["_id"]))["version"]),
                 "last_version": int(m["last_version"]),
                 "aliases": dict(m.get("aliases") or {}), "owner": str(m.get("owner") or "")}
                for m in self.db.models.find().sort("_id", ASCENDING) if int(m["last_version"]) > 0]

    def set_alias(self, name: str, alias: str, version: int) -> dict[str, Any]:
        check_alias(alias)  # also guarantees no '.'/'$' in the field path below
        self._model(name)
        doc = self.db.model_versions.find_one({"name": name, "version": version}, _NO_ID)
        if doc is None:
            raise not_found("version", f"{name}:{version}", "model.version")
        self.db.models.update_one({"_id": name}, {"$set": {f"aliases.{alias}": version}})
        _, aliases, owner = self._model(name)
        return with_aliases(doc, aliases, owner)

    def _check_version(self, name: str, version: int) -> None:
        self._model(name)
        if self.db.model_versions.find_one({"name": name, "version": version}, {"_id": True}) is None:
            raise not_found("version", f"{name}:{version}", "model.version")

    def put_profile(self, name: str, version: int, device_class: str, doc: dict[str, Any]) -> dict[str, Any]:
        self._check_version(name, version)
        # One document per key, replaced whole: last write wins, atomically. The profile is kept as
        # JSON text: its op_ms keys are ONNX node names, which may contain '.' or start with '$'.
        self.db.model_profiles.replace_one(
            {"_id": f"{name}:{version}:{device_class}"},
            {"_id": f"{name}:{version}:{device_class}", "name": name, "version": version,
             "device_class": device_class,
             "json": json.dumps(doc, separators=(",", ":"))}, upsert=True)
        return doc

    def get_profile(self, name: str, version: int, device_class: str) -> dict[str, Any]:
        self._check_version(name, version)
        found = self.db.model_profiles.find_one({"_id": f"{name}:{version}:{device_class}"})
        if found is None:
            raise not_found("profile", f"{name}:{version}:{device_class}", "device_class")
        return dict(json.loads(found["json"]))

    def list_profiles(self, name: str, version: int) -> dict[str, dict[str, Any]]:
        self._check_version(name, version)
        query = {"name": name, "version": version}
        found = self.db.model_profiles.find(query).sort("device_class", ASCENDING)
        return {f["device_class"]: dict(json.loads(f["json"])) for f in found}

    def delete_profiles(self, name: str, version: int, device_class: str | None = None) -> list[str]:
        self._check_version(name, version)
        query: dict[str, Any] = {"name": name, "version": version}
        if device_class is not None:
            query["device_class"] = device_class
        found = self.db.model_profiles.find(query, {"device_class": True})
        classes = sorted(f["device_class"] for f in found)
        self.db.model_profiles.delete_many(query)
        return classes

    def delete_model(self, name: str) -> list[dict[str, Any]]:
        _, aliases, owner = self._model(name)
        versions = [with_aliases(v, aliases, owner) for v in
                    self.db.model_versions.find({"name": name}, _NO_ID).sort("version", ASCENDING)]
        # The model document first: from then on the model reads as absent, whatever is left below.
        self.db.models.delete_one({"_id": name})
        self.db.model_profiles.delete_many({"name": name})
        self.db.model_partitions.delete_many({"name": name})
        self.db.model_alias_events.delete_many({"name": name})
        self.db.model_versions.delete_many({"name": name})
        self.db.counters.delete_one({"_id": f"model:{name}"})
        return versions


def _strip(doc: dict[str, Any] | None) -> dict[str, Any] | None:
    if doc is not None:
        doc.pop("_id", None)
    return doc


class MongoApplicationStore(ApplicationStore):
    def __init__(self, db: Database) -> None:
        self.db = db

    def create_application(self, app: dict[str, Any], services: list[dict[str, Any]],
                           user: str) -> dict[str, Any]:
        app_id = new_id()
        service_ids = [new_id() for _ in services]
        app_doc = {**app, "applicationID": app_id, "userId": user, "microservices": service_ids}
        # Services first: an application never lists a service id that does not exist.
        for sid, svc in zip(service_ids, services, strict=True):
            self.db.services.insert_one({**svc, "_id": sid, "service_id": sid, "application_id": app_id,
                                         "revision": 1})
        self.db.applications.insert_one({**app_doc, "_id": app_id})
        return app_doc

    def get_application(self, application_id: str) -> dict[str, Any]:
        doc = _strip(self.db.applications.find_one({"_id": application_id}))
        if doc is None:
            raise not_found("application", application_id, "application_id")
        return doc

    def find_applications(self, user: str, name: str) -> list[dict[str, Any]]:
        found = self.db.applications.find({"userId": user, "application_name": name})
        return [d for d in (_strip(x) for x in found) if d is not None]

    def update_application(self, application_id: str, fields: dict[str, Any]) -> dict[str, Any]:
        clean = {k: v for k, v in fields.items() if k not in APPLICATION_KEPT_FIELDS and k != "_id"}
        if not clean:
            return self.get_application(application_id)
        doc = self.db.applications.find_one_and_update({"_id": application_id}, {"$set": clean},
                                                       return_document=ReturnDocument.AFTER)
        if doc is None:
            raise not_found("application", application_id, "application_id")
        return _strip(doc) or {}

    def add_service(self, application_id: str, service: dict[str, Any]) -> dict[str, Any]:
        self.get_application(application_id)  # NotFound before anything is stored
        sid = new_id()
        doc = {**service, "service_id": sid, "application_id": application_id, "revision": 1}
        # Service first: an application never lists a service id that does not exist.
        self.db.services.insert_one({**doc, "_id": sid})
        linked = self.db.applications.update_one({"_id": application_id}, {"$push": {"microservices": sid}})
        if linked.matched_count == 0:  # deleted meanwhile: do not leave an orphan behind
            self.db.services.delete_one({"_id": sid})
            raise not_found("application", application_id, "application_id")
        return doc

    def list_applications(self, user: str | None = None) -> list[dict[str, Any]]:
        query = {} if user is None else {"userId": user}
        return [d for d in (_strip(x) for x in self.db.applications.find(query)) if d is not None]

    def delete_application(self, application_id: str) -> list[dict[str, Any]]:
        self.get_application(application_id)
        services = self.list_services(application_id)
        self.db.applications.delete_one({"_id": application_id})
        self.db.services.delete_many({"application_id": application_id})
        return services

    def get_service(self, service_id: str) -> dict[str, Any]:
        doc = _strip(self.db.services.find_one({"_id": service_id}))
        if doc is None:
            raise not_found("service", service_id, "service_id")
        return doc

    def list_services(self, application_id: str | None = None) -> list[dict[str, Any]]:
        query = {} if application_id is None else {"application_id": application_id}
        return [d for d in (_strip(x) for x in self.db.services.find(query)) if d is not None]

    def update_service(self, service_id: str, fields: dict[str, Any],
                       expected_revision: int | None = None) -> dict[str, Any]:
        clean = {k: v for k, v in fields.items()
                 if k not in ("_id", "service_id", "revision", "application_id")}
        query: dict[str, Any] = {"_id": service_id}
        if expected_revision is not None:
            query["revision"] = expected_revision
        update: dict[str, Any] = {"$inc": {"revision": 1}}
        if clean:
            update["$set"] = clean
        doc = self.db.services.find_one_and_update(query, update, return_document=ReturnDocument.AFTER)
        if doc is None:
            current = self.get_service(service_id)  # NotFound if it is gone
            raise Conflict("service changed concurrently",
                           [{"path": "revision", "message": f"expected {expected_revision}, "
                                                            f"stored {current['revision']}"}])
        return _strip(doc) or {}

    def delete_service(self, service_id: str) -> dict[str, Any]:
        doc = self.get_service(service_id)
        self.db.services.delete_one({"_id": service_id})
        self.db.applications.update_one({"_id": doc["application_id"]},
                                         {"$pull": {"microservices": service_id}})
        return doc


class MongoClusterStore(ClusterStore):
    def __init__(self, db: Database) -> None:
        self.db = db

    def register(self, name: str, location: str, url: str, now: float) -> tuple[dict[str, Any], bool]:
        for _ in range(2):  # a concurrent first registration loses the upsert race once, then finds it
            existing = self.db.clusters.find_one_and_update(
                {"cluster_name": name},
                {"$set": {"cluster_location": location, "url": url, "registered_at": now}},
                return_document=ReturnDocument.AFTER)
            if existing is not None:
                return _strip(existing) or {}, False
            doc = new_cluster_doc(new_id(), name, location, url, now)
            try:
                self.db.clusters.insert_one({**doc, "_id": doc["cluster_id"]})
            except DuplicateKeyError:
                continue
            return doc, True
        raise Conflict(f"cluster {name!r} registration raced", [{"path": "cluster_name", "message": "retry"}])

    def update_aggregate(self, cluster_id: str, aggregate: dict[str, Any], now: float) -> dict[str, Any]:
        doc = self.db.clusters.find_one_and_update(
            {"_id": cluster_id}, {"$set": {"aggregate": aggregate, "last_push": now}},
            return_document=ReturnDocument.AFTER)
        if doc is None:
            raise not_found("cluster", cluster_id, "cluster_id")
        return _strip(doc) or {}

    def get(self, cluster_id: str) -> dict[str, Any]:
        doc = _strip(self.db.clusters.find_one({"_id": cluster_id}))
        if doc is None:
            raise not_found("cluster", cluster_id, "cluster_id")
        return doc

    def list(self) -> list[dict[str, Any]]:
        return [d for d in (_strip(x) for x in self.db.clusters.find().sort("cluster_name", ASCENDING))
                if d is not None]


class MongoUserStore(UserStore):
    """Users keyed by ``user_id`` (unique ``username`` index: a duplicate is refused by the
    database itself, also under concurrent creates); cluster tokens keyed by ``token_id``."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def create_user(self, username: str, password_hash: str, roles: list[str],
                    created_at: float) -> dict[str, Any]:
        doc = new_user_doc(username, password_hash, roles, created_at)
        try:
            self.db.users.insert_one({**doc, "_id": doc["user_id"]})
        except DuplicateKeyError:
            raise username_taken(username) from None
        return doc

    def get_user(self, user_id: str) -> dict[str, Any]:
        doc = _strip(self.db.users.find_one({"_id": user_id}))
        if doc is None:
            raise not_found("user", user_id, "user_id")
        return doc

    def find_user(self, username: str) -> dict[str, Any] | None:
        return _strip(self.db.users.find_one({"username": username}))

    def list_users(self) -> list[dict[str, Any]]:
        return [d for d in (_strip(x) for x in self.db.users.find().sort("created_at", ASCENDING))
                if d is not None]

    def count_users(self) -> int:
        # Not count_documents: the embedded server answers it through an aggregation fallback that
        # logs a WARNING at every start; the users are few, so count their ids.
        return sum(1 for _ in self.db.users.find({}, {"_id": True}))

    def update_user(self, user_id: str, fields: dict[str, Any]) -> dict[str, Any]:
        clean = {k: v for k, v in fields.items() if k in USER_FIELDS}
        if not clean:
            return self.get_user(user_id)
        doc = self.db.users.find_one_and_update({"_id": user_id}, {"$set": clean},
                                                return_document=ReturnDocument.AFTER)
        if doc is None:
            raise not_found("user", user_id, "user_id")
        return _strip(doc) or {}

    def delete_user(self, user_id: str) -> dict[str, Any]:
        doc = self.get_user(user_id)
        self.db.users.delete_one({"_id": user_id})
        return doc

    def create_cluster_token(self, token_id: str, secret_sha256: str, owner: str, name: str,
                             created_at: float) -> dict[str, Any]:
        doc = new_cluster_token_doc(token_id, secret_sha256, owner, name, created_at)
        try:
            self.db.cluster_tokens.insert_one({**doc, "_id": token_id})
        except DuplicateKeyError:
            raise Conflict(f"cluster token {token_id!r} exists",
                           [{"path": "token_id", "message": "taken"}]) from None
        return doc

    def get_cluster_token(self, token_id: str) -> dict[str, Any]:
        doc = _strip(self.db.cluster_tokens.find_one({"_id": token_id}))
        if doc is None:
            raise not_found("cluster token", token_id, "token_id")
        return doc

    def list_cluster_tokens(self) -> list[dict[str, Any]]:
        found = self.db.cluster_tokens.find().sort("created_at", ASCENDING)
        return [d for d in (_strip(x) for x in found) if d is not None]

    def delete_cluster_token(self, token_id: str) -> dict[str, Any]:
        doc = self.get_cluster_token(token_id)
        self.db.cluster_tokens.delete_one({"_id": token_id})
        return doc
