"""The registry's lifecycle on MongoDB: version metadata, compare-and-set aliases, version delete and
partition records (the :class:`~root_orchestrator.stores.base.ModelRegistry` methods of issue 11).

A mixin of :class:`~root_orchestrator.stores.mongo.MongoModelRegistry` (it uses its ``db``,
``_model`` and ``_check_version``). Atomicity, without transactions:

- an alias moves in ONE ``find_one_and_update`` on the model document whose filter carries the
  expected value (``aliases.<alias>: expected``, or ``$exists: false``), so of N writers racing
  from the same expected value exactly one matches; the same update bumps ``alias_seq``, which
  numbers the change's event (``model_alias_events``, the last :data:`ALIAS_EVENTS_KEPT` kept);
- a version update is decided in Python (:func:`merged_fields`, pure) and committed with a
  ``find_one_and_update`` filtered on the version's ``rev``; a writer that lost the race reads again
  and re-decides (so ``lineage`` is set once even under concurrent PATCHes). Tags and metrics are
  written whole (not ``$set`` by path), so their keys may contain ``.``.

Collections: ``model_versions`` (``tags``, ``metrics``, ``lineage``, ``rev`` added to a version),
``model_alias_events`` (``_id`` ``<name>:<seq>``), ``model_partitions`` (``_id``
``<name>:<version>:<sha256>``).
"""

from __future__ import annotations

import logging
from typing import Any

from pymongo import ASCENDING, DESCENDING, ReturnDocument
from pymongo.database import Database

from root_orchestrator.stores.base import (
    ALIAS_EVENTS_KEPT,
    check_alias,
    check_sha256,
    not_found,
    with_aliases,
)
from treeline_common.errors import Conflict, InvalidInput
from treeline_common.registry import Lineage, PartitionRecord, VersionUpdate

log = logging.getLogger(__name__)

UPDATE_TRIES = 16  # re-decisions of a version update that lost a race before answering Conflict
LINEAGE_DEPTH = 64  # ancestors walked looking for a cycle
_HIDDEN = {"_id": False}
_PARTITION_FIELDS = {"_id": False, "name": False, "version": False}


def merged_fields(doc: dict[str, Any], update: VersionUpdate) -> dict[str, Any]:
    """The fields of version ``doc`` that ``update`` sets (pure): ``description`` replaced, ``tags`` and
    ``metrics`` merged by key (None deletes), ``lineage`` set once (Conflict when ``doc`` has one)."""
    fields: dict[str, Any] = {}
    if update.description is not None:
        fields["description"] = update.description
    if update.tags is not None:
        fields["tags"] = _merge(doc.get("tags") or {}, update.tags)
    if update.metrics is not None:
        fields["metrics"] = _merge(doc.get("metrics") or {}, update.metrics)
    if update.lineage is not None:
        if doc.get("lineage"):
            raise Conflict(f"the lineage of {doc.get('name')}:{doc.get('version')} is already set",
                           [{"path": "lineage", "message": "set once; register a new version instead"}])
        fields["lineage"] = update.lineage.to_dict()
    return fields


def _merge(stored: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    merged = dict(stored)
    for key, value in changes.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = value
    return merged


def ensure_lifecycle_indexes(db: Database[Any]) -> None:
    db.model_partitions.create_index([("name", ASCENDING), ("version", ASCENDING)])
    db.model_alias_events.create_index([("name", ASCENDING), ("seq", ASCENDING)])


class MongoRegistryLifecycle:
    """See the module docstring; mixed into ``MongoModelRegistry``."""

    db: Database[Any]

    def _model(self, name: str) -> tuple[int, dict[str, int], str]:
        raise NotImplementedError  # MongoModelRegistry's

    def _check_version(self, name: str, version: int) -> None:
        raise NotImplementedError  # MongoModelRegistry's

    def delete_model(self, name: str) -> list[dict[str, Any]]:
        raise NotImplementedError  # MongoModelRegistry's

    # ---------------------------------------------------------------- version metadata

    def update_version(self, name: str, version: int, update: VersionUpdate) -> dict[str, Any]:
        self._model(name)
        if update.lineage is not None:
            self._check_parent(name, version, update.lineage)
        for _ in range(UPDATE_TRIES):
            doc = self.db.model_versions.find_one({"name": name, "version": version}, _HIDDEN)
            if doc is None:
                raise not_found("version", f"{name}:{version}", "model.version")
            fields = merged_fields(doc, update)
            rev = doc.get("rev")
            new = self.db.model_versions.find_one_and_update(
                {"name": name, "version": version, "rev": rev},  # None also matches a doc without rev
                {"$set": {**fields, "rev": int(rev or 0) + 1}}, projection=_HIDDEN,
                return_document=ReturnDocument.AFTER)
            if new is not None:
                _, aliases, owner = self._model(name)
                return with_aliases(new, aliases, owner)
        raise Conflict(f"{name}:{version} is being changed by others; retry",
                       [{"path": "model.version", "message": "concurrent updates"}])

    def _check_parent(self, name: str, version: int, lineage: Lineage) -> None:
        """NotFound unless the parent exists; InvalidInput when it is this version or descends from it."""
        here = (name, version)
        current = (lineage.parent.name, lineage.parent.version)
        for depth in range(LINEAGE_DEPTH):
            if current == here:
                raise InvalidInput("the lineage would make a cycle", [
                    {"path": "lineage.parent", "message": f"{current[0]}:{current[1]} is this version or "
                                                          "descends from it"}])
            doc = self.db.model_versions.find_one({"name": current[0], "version": current[1]},
                                                  {"lineage": True})
            if doc is None:
                if depth == 0:
                    raise not_found("version", f"{current[0]}:{current[1]}", "lineage.parent")
                return  # an ancestor was deleted: the chain ends there
            parent = (doc.get("lineage") or {}).get("parent")
            if not parent:
                return
            current = (str(parent.get("name")), int(parent.get("version") or 0))

    # ---------------------------------------------------------------- aliases

    def move_alias(self, name: str, alias: str, version: int, *, expected: int | None = None,
                   conditional: bool = False, by: str = "", at: float = 0.0) -> dict[str, Any]:
        check_alias(alias)  # also guarantees no '.'/'$' in the field path below
        self._check_version(name, version)
        query: dict[str, Any] = {"_id": name}
        if conditional:
            query[f"aliases.{alias}"] = expected if expected is not None else {"$exists": False}
        before = self.db.models.find_one_and_update(
            query, {"$set": {f"aliases.{alias}": version}, "$inc": {"alias_seq": 1}},
            return_document=ReturnDocument.BEFORE)
        if before is None:
            raise self._alias_conflict(name, alias, expected)
        previous = (before.get("aliases") or {}).get(alias)
        self._record(name, before, alias, version, previous, by, at)
        doc = self.db.model_versions.find_one({"name": name, "version": version}, _HIDDEN)
        if doc is None:  # deleted meanwhile: the alias names nothing now
            raise not_found("version", f"{name}:{version}", "model.version")
        _, aliases, owner = self._model(name)
        return with_aliases(doc, aliases, owner)

    def delete_alias(self, name: str, alias: str, *, expected: int | None = None,
                     conditional: bool = False, by: str = "", at: float = 0.0) -> int:
        check_alias(alias)
        _, aliases, _ = self._model(name)
        if alias not in aliases and not (conditional and expected is None):
            raise not_found("alias", f"{name}@{alias}", "alias")
        query: dict[str, Any] = {"_id": name}
        query[f"aliases.{alias}"] = expected if conditional and expected is not None else {"$exists": True}
        before = self.db.models.find_one_and_update(
            query, {"$unset": {f"aliases.{alias}": ""}, "$inc": {"alias_seq": 1}},
            return_document=ReturnDocument.BEFORE)
        if before is None:
            if alias not in self._model(name)[1]:
                raise not_found("alias", f"{name}@{alias}", "alias")
            raise self._alias_conflict(name, alias, expected)
        previous = int((before.get("aliases") or {})[alias])
        self._record(name, before, alias, None, previous, by, at)
        return previous

    def _alias_conflict(self, name: str, alias: str, expected: int | None) -> Conflict:
        current = self._model(name)[1].get(alias)  # NotFound if the model is gone
        now = f"version {current}" if current is not None else "nothing"
        wanted = f"version {expected}" if expected is not None else "nothing"
        retry = f"--expected {current}" if current is not None else "--expected none"
        return Conflict(f"alias {alias!r} of {name!r} points at {now}, not {wanted}",
                        [{"path": "expected", "message": f"it is {now} now: check, then retry with {retry}",
                          "current": current}])

    def _record(self, name: str, before: dict[str, Any], alias: str, version: int | None,
                previous: Any, by: str, at: float) -> None:
        """One alias event, numbered by the move's own ``alias_seq`` (so two moves never share one);
        events older than the last :data:`ALIAS_EVENTS_KEPT` are dropped."""
        seq = int(before.get("alias_seq") or 0) + 1
        self.db.model_alias_events.insert_one({
            "_id": f"{name}:{seq}", "name": name, "seq": seq, "alias": alias, "version": version,
            "previous": int(previous) if previous is not None else None, "by": by, "at": at})
        self.db.model_alias_events.delete_many({"name": name, "seq": {"$lte": seq - ALIAS_EVENTS_KEPT}})
        log.info("alias %s@%s: %s -> %s (by %s)", name, alias, previous, version, by or "?")

    def alias_events(self, name: str) -> list[dict[str, Any]]:
        self._model(name)
        found = self.db.model_alias_events.find({"name": name}, {"_id": False, "name": False})
        return list(found.sort("seq", ASCENDING))

    # ---------------------------------------------------------------- versions and partitions

    def delete_version(self, name: str, version: int, *, by: str = "", at: float = 0.0) -> dict[str, Any]:
        _, aliases, owner = self._model(name)
        doc = self.db.model_versions.find_one({"name": name, "version": version}, _HIDDEN)
        if doc is None:
            raise not_found("version", f"{name}:{version}", "model.version")
        deleted = with_aliases(doc, aliases, owner)
        remaining = list(self.db.model_versions.find({"name": name, "version": {"$ne": version}},
                                                     {"version": True}).sort("version", DESCENDING).limit(1))
        if not remaining:  # its last version: the model goes with it (as DELETE /api/models/<name>)
            self.delete_model(name)
            return deleted
        self.db.model_versions.delete_one({"name": name, "version": version})
        self.db.model_profiles.delete_many({"name": name, "version": version})
        self.db.model_partitions.delete_many({"name": name, "version": version})
        for alias in deleted["aliases"]:  # only if it still names this version
            before = self.db.models.find_one_and_update(
                {"_id": name, f"aliases.{alias}": version},
                {"$unset": {f"aliases.{alias}": ""}, "$inc": {"alias_seq": 1}})
            if before is not None:
                self._record(name, before, alias, None, version, by, at)
        # `latest` falls back to the newest remaining version (unless a newer one was made meanwhile)
        self.db.models.update_one({"_id": name, "last_version": version},
                                  {"$set": {"last_version": int(remaining[0]["version"])}})
        return deleted

    def put_partition(self, name: str, version: int, sha256: str, record: PartitionRecord,
                      at: float = 0.0) -> dict[str, Any]:
        check_sha256(sha256)
        self._check_version(name, version)
        facts = {k: v for k, v in record.to_dict().items() if k != "deployment_id"}
        key = f"{name}:{version}:{sha256}"
        self.db.model_partitions.update_one(
            {"_id": key}, {"$set": {"name": name, "version": version, "sha256": sha256, **facts,
                                    "updated_at": at},
                           "$addToSet": {"deployments": record.deployment_id}}, upsert=True)
        found = self.db.model_partitions.find_one({"_id": key}, _PARTITION_FIELDS)
        return dict(found or {})

    def list_partitions(self, name: str, version: int) -> list[dict[str, Any]]:
        self._check_version(name, version)
        found = self.db.model_partitions.find({"name": name, "version": version}, _PARTITION_FIELDS)
        return sorted(found, key=lambda p: (int(p.get("stage") or 0), str(p.get("sha256"))))
