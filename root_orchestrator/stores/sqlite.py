"""The zero-setup persistent backend: one SQLite file plus artifact files, under one directory.

Layout: ``<dir>/root.db`` (WAL mode; JSON documents in TEXT columns) and
``<dir>/artifacts/<sha[:2]>/<sha>``. One connection guarded by a lock keeps it thread-safe
under Flask's threaded server (the root's write rate is tiny). Artifacts are written to a temp
file in the same directory while hashing, fsynced, then renamed, so a crash never leaves a
partial artifact under its final name.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from root_orchestrator.stores.base import (
    APPLICATION_KEPT_FIELDS,
    ApplicationStore,
    ArtifactStore,
    ClusterStore,
    Data,
    ModelRegistry,
    PutResult,
    check_alias,
    check_sha256,
    iter_chunks,
    new_cluster_doc,
    new_id,
    not_found,
    parse_ref,
    resolve_version,
    with_aliases,
)
from treeline_common.errors import Conflict, IntegrityError

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS models (name TEXT PRIMARY KEY, last_version INTEGER NOT NULL,
                                   aliases TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS model_versions (name TEXT NOT NULL, version INTEGER NOT NULL, doc TEXT NOT NULL,
                                           PRIMARY KEY (name, version));
CREATE TABLE IF NOT EXISTS applications (id TEXT PRIMARY KEY, user TEXT, doc TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS services (id TEXT PRIMARY KEY, application_id TEXT NOT NULL, doc TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS clusters (id TEXT PRIMARY KEY, name TEXT UNIQUE NOT NULL, doc TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS model_profiles (name TEXT NOT NULL, version INTEGER NOT NULL,
                                           device_class TEXT NOT NULL, doc TEXT NOT NULL,
                                           PRIMARY KEY (name, version, device_class));
"""


class SqliteDatabase:
    """The shared connection; ``tx()`` is one serialized transaction (commit or roll back)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.RLock()
        self._conn: sqlite3.Connection | None = None

    def _connect(self) -> sqlite3.Connection:
        if self._conn is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA busy_timeout=5000")
            conn.executescript(_SCHEMA)
            self._conn = conn
            log.info("sqlite store opened at %s", self.path)
        return self._conn

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            conn = self._connect()
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


def _dump(doc: dict[str, Any]) -> str:
    return json.dumps(doc, separators=(",", ":"), sort_keys=True)


class SqliteArtifactStore(ArtifactStore):
    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, sha256: str) -> Path:
        check_sha256(sha256)
        return self.root / sha256[:2] / sha256

    def put(self, data: Data, expected_sha256: str | None = None) -> PutResult:
        if expected_sha256 is not None:
            check_sha256(expected_sha256)
        tmp_dir = self.root / "tmp"
        tmp_dir.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        size = 0
        fd, tmp_name = tempfile.mkstemp(dir=tmp_dir)
        try:
            with os.fdopen(fd, "wb") as out:
                for chunk in iter_chunks(data):
                    digest.update(chunk)
                    size += len(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            sha256 = digest.hexdigest()
            if expected_sha256 is not None and sha256 != expected_sha256:
                raise IntegrityError("artifact bytes do not match their sha256", [
                    {"path": "sha256", "message": f"expected {expected_sha256}, got {sha256}"}])
            final = self._path(sha256)
            if final.exists():
                return PutResult(sha256, size, created=False)
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp_name, final)  # atomic; a concurrent identical put just replaces equal bytes
            tmp_name = ""
            log.debug("stored artifact %s (%d bytes)", sha256, size)
            return PutResult(sha256, size, created=True)
        finally:
            if tmp_name:
                os.unlink(tmp_name)

    def open(self, sha256: str) -> IO[bytes]:
        try:
            return open(self._path(sha256), "rb")
        except FileNotFoundError:
            raise not_found("artifact", sha256, "sha256") from None

    def exists(self, sha256: str) -> bool:
        return self._path(sha256).is_file()

    def size(self, sha256: str) -> int:
        try:
            return self._path(sha256).stat().st_size
        except FileNotFoundError:
            raise not_found("artifact", sha256, "sha256") from None

    def delete(self, sha256: str) -> bool:
        try:
            self._path(sha256).unlink()
            return True
        except FileNotFoundError:
            return False


class SqliteModelRegistry(ModelRegistry):
    def __init__(self, db: SqliteDatabase) -> None:
        self.db = db

    def create_version(self, name: str, sha256: str, size: int, signature: dict[str, Any],
                       description: str = "", *, fmt: str = "onnx",
                       created_at: float = 0.0) -> dict[str, Any]:
        with self.db.tx() as conn:
            row = conn.execute("SELECT last_version FROM models WHERE name=?", (name,)).fetchone()
            version = (row[0] if row else 0) + 1
            if row:
                conn.execute("UPDATE models SET last_version=? WHERE name=?", (version, name))
            else:
                conn.execute("INSERT INTO models (name, last_version, aliases) VALUES (?, ?, '{}')",
                             (name, version))
            doc = {"name": name, "version": version, "sha256": sha256, "size": size, "format": fmt,
                   "signature": signature, "created_at": created_at, "description": description}
            conn.execute("INSERT INTO model_versions (name, version, doc) VALUES (?, ?, ?)",
                         (name, version, _dump(doc)))
            row = conn.execute("SELECT aliases FROM models WHERE name=?", (name,)).fetchone()
            aliases = json.loads(row[0])
        return with_aliases(doc, aliases)

    def _model_row(self, conn: sqlite3.Connection, name: str) -> tuple[int, dict[str, int]]:
        row = conn.execute("SELECT last_version, aliases FROM models WHERE name=?", (name,)).fetchone()
        if row is None:
            raise not_found("model", name, "model.name")
        return row[0], json.loads(row[1])

    def get_version(self, name: str, ref: int | str) -> dict[str, Any]:
        ref = parse_ref(ref)
        with self.db.tx() as conn:
            last, aliases = self._model_row(conn, name)
            version = resolve_version(name, ref, last, aliases)
            row = conn.execute("SELECT doc FROM model_versions WHERE name=? AND version=?",
                               (name, version)).fetchone()
        if row is None:
            raise not_found("version", f"{name}:{ref}", "model.version")
        return with_aliases(json.loads(row[0]), aliases)

    def list_versions(self, name: str) -> list[dict[str, Any]]:
        with self.db.tx() as conn:
            _, aliases = self._model_row(conn, name)
            rows = conn.execute("SELECT doc FROM model_versions WHERE name=? ORDER BY version",
                                (name,)).fetchall()
        return [with_aliases(json.loads(r[0]), aliases) for r in rows]

    def list_models(self) -> list[dict[str, Any]]:
        with self.db.tx() as conn:
            rows = conn.execute("SELECT name, last_version, aliases FROM models ORDER BY name").fetchall()
        return [{"name": n, "latest_version": v, "aliases": json.loads(a)} for n, v, a in rows]

    def set_alias(self, name: str, alias: str, version: int) -> dict[str, Any]:
        check_alias(alias)
        with self.db.tx() as conn:
            _, aliases = self._model_row(conn, name)
            row = conn.execute("SELECT doc FROM model_versions WHERE name=? AND version=?",
                               (name, version)).fetchone()
            if row is None:
                raise not_found("version", f"{name}:{version}", "model.version")
            aliases[alias] = version
            conn.execute("UPDATE models SET aliases=? WHERE name=?", (_dump(aliases), name))
        return with_aliases(json.loads(row[0]), aliases)

    def _check_version(self, conn: sqlite3.Connection, name: str, version: int) -> None:
        self._model_row(conn, name)
        found = conn.execute("SELECT 1 FROM model_versions WHERE name=? AND version=?", (name, version))
        if found.fetchone() is None:
            raise not_found("version", f"{name}:{version}", "model.version")

    def put_profile(self, name: str, version: int, device_class: str, doc: dict[str, Any]) -> dict[str, Any]:
        with self.db.tx() as conn:
            self._check_version(conn, name, version)
            conn.execute("INSERT OR REPLACE INTO model_profiles (name, version, device_class, doc) "
                         "VALUES (?, ?, ?, ?)", (name, version, device_class, _dump(doc)))
        return doc

    def get_profile(self, name: str, version: int, device_class: str) -> dict[str, Any]:
        with self.db.tx() as conn:
            self._check_version(conn, name, version)
            row = conn.execute("SELECT doc FROM model_profiles WHERE name=? AND version=? AND device_class=?",
                               (name, version, device_class)).fetchone()
        if row is None:
            raise not_found("profile", f"{name}:{version}:{device_class}", "device_class")
        return json.loads(row[0])

    def list_profiles(self, name: str, version: int) -> dict[str, dict[str, Any]]:
        with self.db.tx() as conn:
            self._check_version(conn, name, version)
            rows = conn.execute("SELECT device_class, doc FROM model_profiles WHERE name=? AND version=? "
                                "ORDER BY device_class", (name, version)).fetchall()
        return {c: json.loads(d) for c, d in rows}

    def delete_profiles(self, name: str, version: int, device_class: str | None = None) -> list[str]:
        with self.db.tx() as conn:
            self._check_version(conn, name, version)
            where, args = "name=? AND version=?", [name, version]
            if device_class is not None:
                where, args = where + " AND device_class=?", [*args, device_class]
            rows = conn.execute(f"SELECT device_class FROM model_profiles WHERE {where}", args).fetchall()
            conn.execute(f"DELETE FROM model_profiles WHERE {where}", args)
        return sorted(r[0] for r in rows)

    def delete_model(self, name: str) -> list[dict[str, Any]]:
        with self.db.tx() as conn:
            self._model_row(conn, name)
            rows = conn.execute("SELECT doc FROM model_versions WHERE name=? ORDER BY version",
                                (name,)).fetchall()
            for table in ("model_profiles", "model_versions", "models"):
                conn.execute(f"DELETE FROM {table} WHERE name=?", (name,))
        return [json.loads(r[0]) for r in rows]


class SqliteApplicationStore(ApplicationStore):
    def __init__(self, db: SqliteDatabase) -> None:
        self.db = db

    def create_application(self, app: dict[str, Any], services: list[dict[str, Any]],
                           user: str) -> dict[str, Any]:
        app_id = new_id()
        service_ids = [new_id() for _ in services]
        app_doc = {**app, "applicationID": app_id, "userId": user, "microservices": service_ids}
        with self.db.tx() as conn:
            conn.execute("INSERT INTO applications (id, user, doc) VALUES (?, ?, ?)",
                         (app_id, user, _dump(app_doc)))
            for sid, svc in zip(service_ids, services, strict=True):
                doc = {**svc, "service_id": sid, "application_id": app_id, "revision": 1}
                conn.execute("INSERT INTO services (id, application_id, doc) VALUES (?, ?, ?)",
                             (sid, app_id, _dump(doc)))
        return app_doc

    def get_application(self, application_id: str) -> dict[str, Any]:
        with self.db.tx() as conn:
            return self._application(conn, application_id)

    def find_applications(self, user: str, name: str) -> list[dict[str, Any]]:
        with self.db.tx() as conn:
            rows = conn.execute("SELECT doc FROM applications WHERE user=? AND "
                                "json_extract(doc, '$.application_name')=? ORDER BY rowid",
                                (user, name)).fetchall()
        return [json.loads(r[0]) for r in rows]

    def update_application(self, application_id: str, fields: dict[str, Any]) -> dict[str, Any]:
        with self.db.tx() as conn:
            doc = self._application(conn, application_id)
            doc.update({k: v for k, v in fields.items() if k not in APPLICATION_KEPT_FIELDS})
            conn.execute("UPDATE applications SET doc=? WHERE id=?", (_dump(doc), application_id))
        return doc

    def add_service(self, application_id: str, service: dict[str, Any]) -> dict[str, Any]:
        sid = new_id()
        with self.db.tx() as conn:
            app = self._application(conn, application_id)
            doc = {**service, "service_id": sid, "application_id": application_id, "revision": 1}
            conn.execute("INSERT INTO services (id, application_id, doc) VALUES (?, ?, ?)",
                         (sid, application_id, _dump(doc)))
            app["microservices"] = [*app.get("microservices", []), sid]
            conn.execute("UPDATE applications SET doc=? WHERE id=?", (_dump(app), application_id))
        return doc

    def _application(self, conn: sqlite3.Connection, application_id: str) -> dict[str, Any]:
        row = conn.execute("SELECT doc FROM applications WHERE id=?", (application_id,)).fetchone()
        if row is None:
            raise not_found("application", application_id, "application_id")
        return json.loads(row[0])

    def list_applications(self, user: str | None = None) -> list[dict[str, Any]]:
        with self.db.tx() as conn:
            if user is None:
                rows = conn.execute("SELECT doc FROM applications ORDER BY rowid").fetchall()
            else:
                rows = conn.execute("SELECT doc FROM applications WHERE user=? ORDER BY rowid",
                                    (user,)).fetchall()
        return [json.loads(r[0]) for r in rows]

    def delete_application(self, application_id: str) -> list[dict[str, Any]]:
        with self.db.tx() as conn:
            if conn.execute("SELECT 1 FROM applications WHERE id=?", (application_id,)).fetchone() is None:
                raise not_found("application", application_id, "application_id")
            rows = conn.execute("SELECT doc FROM services WHERE application_id=? ORDER BY rowid",
                                (application_id,)).fetchall()
            conn.execute("DELETE FROM services WHERE application_id=?", (application_id,))
            conn.execute("DELETE FROM applications WHERE id=?", (application_id,))
        return [json.loads(r[0]) for r in rows]

    def get_service(self, service_id: str) -> dict[str, Any]:
        with self.db.tx() as conn:
            return self._service(conn, service_id)

    def _service(self, conn: sqlite3.Connection, service_id: str) -> dict[str, Any]:
        row = conn.execute("SELECT doc FROM services WHERE id=?", (service_id,)).fetchone()
        if row is None:
            raise not_found("service", service_id, "service_id")
        return json.loads(row[0])

    def list_services(self, application_id: str | None = None) -> list[dict[str, Any]]:
        with self.db.tx() as conn:
            if application_id is None:
                rows = conn.execute("SELECT doc FROM services ORDER BY rowid").fetchall()
            else:
                rows = conn.execute("SELECT doc FROM services WHERE application_id=? ORDER BY rowid",
                                    (application_id,)).fetchall()
        return [json.loads(r[0]) for r in rows]

    def update_service(self, service_id: str, fields: dict[str, Any],
                       expected_revision: int | None = None) -> dict[str, Any]:
        with self.db.tx() as conn:
            doc = self._service(conn, service_id)
            if expected_revision is not None and doc["revision"] != expected_revision:
                raise Conflict("service changed concurrently",
                               [{"path": "revision", "message": f"expected {expected_revision}, "
                                                                f"stored {doc['revision']}"}])
            doc.update({k: v for k, v in fields.items()
                        if k not in ("service_id", "revision", "application_id")})
            doc["revision"] += 1
            conn.execute("UPDATE services SET doc=? WHERE id=?", (_dump(doc), service_id))
        return doc

    def delete_service(self, service_id: str) -> dict[str, Any]:
        with self.db.tx() as conn:
            doc = self._service(conn, service_id)
            conn.execute("DELETE FROM services WHERE id=?", (service_id,))
            row = conn.execute("SELECT doc FROM applications WHERE id=?", (doc["application_id"],)).fetchone()
            if row is not None:
                app = json.loads(row[0])
                app["microservices"] = [s for s in app.get("microservices", []) if s != service_id]
                conn.execute("UPDATE applications SET doc=? WHERE id=?", (_dump(app), doc["application_id"]))
        return doc


class SqliteClusterStore(ClusterStore):
    def __init__(self, db: SqliteDatabase) -> None:
        self.db = db

    def register(self, name: str, location: str, url: str, now: float) -> tuple[dict[str, Any], bool]:
        with self.db.tx() as conn:
            row = conn.execute("SELECT doc FROM clusters WHERE name=?", (name,)).fetchone()
            if row is None:
                doc = new_cluster_doc(new_id(), name, location, url, now)
                conn.execute("INSERT INTO clusters (id, name, doc) VALUES (?, ?, ?)",
                             (doc["cluster_id"], name, _dump(doc)))
                return doc, True
            doc = json.loads(row[0])
            doc.update({"cluster_location": location, "url": url, "registered_at": now})
            conn.execute("UPDATE clusters SET doc=? WHERE id=?", (_dump(doc), doc["cluster_id"]))
            return doc, False

    def update_aggregate(self, cluster_id: str, aggregate: dict[str, Any], now: float) -> dict[str, Any]:
        with self.db.tx() as conn:
            doc = self._get(conn, cluster_id)
            doc.update({"aggregate": aggregate, "last_push": now})
            conn.execute("UPDATE clusters SET doc=? WHERE id=?", (_dump(doc), cluster_id))
        return doc

    def _get(self, conn: sqlite3.Connection, cluster_id: str) -> dict[str, Any]:
        row = conn.execute("SELECT doc FROM clusters WHERE id=?", (cluster_id,)).fetchone()
        if row is None:
            raise not_found("cluster", cluster_id, "cluster_id")
        return json.loads(row[0])

    def get(self, cluster_id: str) -> dict[str, Any]:
        with self.db.tx() as conn:
            return self._get(conn, cluster_id)

    def list(self) -> list[dict[str, Any]]:
        with self.db.tx() as conn:
            rows = conn.execute("SELECT doc FROM clusters ORDER BY name").fetchall()
        return [json.loads(r[0]) for r in rows]
