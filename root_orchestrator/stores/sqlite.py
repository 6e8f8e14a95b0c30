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
from collections.abc import Hashable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from root_orchestrator.stores.base import (
    APPLICATION_KEPT_FIELDS,
    USER_FIELDS,
    ApplicationStore,
    ArtifactStore,
    ClusterStore,
    Data,
    ModelRegistry,
    PutResult,
    UserStore,
    check_alias,
    check_sha256,
    iter_chunks,
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
CREATE TABLE IF NOT EXISTS users (id TEXT PRIMARY KEY, username TEXT UNIQUE NOT NULL, doc TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS cluster_tokens (id TEXT PRIMARY KEY, doc TEXT NOT NULL);
"""
# Columns added after the first release: (table, column, declaration). Added at open when missing.
_MIGRATIONS = (("models", "owner", "TEXT NOT NULL DEFAULT ''"),)


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
            for table, column, declaration in _MIGRATIONS:
                known = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
                if column not in known:
                    conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")
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
        self.staging_dir = root / "tmp"  # same file system as the artifacts: put_file renames

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
            created = self._place(Path(tmp_name), sha256, size)
            tmp_name = ""
            return PutResult(sha256, size, created=created)
        finally:
            if tmp_name:
                os.unlink(tmp_name)

    def put_file(self, path: Path, expected_sha256: str | None = None) -> PutResult:
        """Hash ``path`` and move it into place (a rename when it is on this store's file system)."""
        if expected_sha256 is not None:
            check_sha256(expected_sha256)
        digest = hashlib.sha256()
        size = 0
        with path.open("rb") as stream:
            for chunk in iter_chunks(stream):
                digest.update(chunk)
                size += len(chunk)
        sha256 = digest.hexdigest()
        if expected_sha256 is not None and sha256 != expected_sha256:
            raise IntegrityError("artifact bytes do not match their sha256", [
                {"path": "sha256", "message": f"expected {expected_sha256}, got {sha256}"}])
        try:
            same_fs = path.stat().st_dev == self.root.stat().st_dev
        except FileNotFoundError:
            same_fs = False
        if not same_fs:
            with path.open("rb") as stream:
                return self.put(stream, sha256)
        return PutResult(sha256, size, created=self._place(path, sha256, size))

    def _place(self, verified: Path, sha256: str, size: int) -> bool:
        """Move ``verified`` (bytes hashing to ``sha256``) to its final name unless a sound copy is
        there already (then delete it); True when it was moved (new, or a damaged copy replaced)."""
        final = self._path(sha256)
        if final.exists():
            if self.stored_digest(sha256) == sha256:
                verified.unlink(missing_ok=True)
                return False
            log.warning("artifact %s was corrupt on disk; replaced by the bytes just uploaded", sha256)
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(verified, final)  # atomic; a concurrent identical put just replaces equal bytes
        self._forget(sha256)
        log.debug("stored artifact %s (%d bytes)", sha256, size)
        return True

    def _open_raw(self, sha256: str) -> IO[bytes]:
        try:
            return open(self._path(sha256), "rb")
        except FileNotFoundError:
            raise not_found("artifact", sha256, "sha256") from None

    def _fingerprint(self, sha256: str) -> Hashable | None:
        try:
            st = self._path(sha256).stat()
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

    def exists(self, sha256: str) -> bool:
        return self._path(sha256).is_file()

    def size(self, sha256: str) -> int:
        try:
            return self._path(sha256).stat().st_size
        except FileNotFoundError:
            raise not_found("artifact", sha256, "sha256") from None

    def delete(self, sha256: str) -> bool:
        self._forget(sha256)
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
                       created_at: float = 0.0, owner: str | None = None) -> dict[str, Any]:
        with self.db.tx() as conn:
            row = conn.execute("SELECT last_version, owner FROM models WHERE name=?", (name,)).fetchone()
            if row and owner is not None and row[1] != owner:
                raise model_taken(name)
            version = (row[0] if row else 0) + 1
            if row:
                conn.execute("UPDATE models SET last_version=? WHERE name=?", (version, name))
            else:
                conn.execute("INSERT INTO models (name, last_version, aliases, owner) VALUES (?, ?, '{}', ?)",
                             (name, version, owner or ""))
            doc = {"name": name, "version": version, "sha256": sha256, "size": size, "format": fmt,
                   "signature": signature, "created_at": created_at, "description": description}
            conn.execute("INSERT INTO model_versions (name, version, doc) VALUES (?, ?, ?)",
                         (name, version, _dump(doc)))
            _, aliases, model_owner = self._model_row(conn, name)
        return with_aliases(doc, aliases, model_owner)

    def _model_row(self, conn: sqlite3.Connection, name: str) -> tuple[int, dict[str, int], str]:
        row = conn.execute("SELECT last_version, aliases, owner FROM models WHERE name=?", (name,)).fetchone()
        if row is None:
            raise not_found("model", name, "model.name")
        return row[0], json.loads(row[1]), row[2]

    def get_version(self, name: str, ref: int | str) -> dict[str, Any]:
        ref = parse_ref(ref)
        with self.db.tx() as conn:
            last, aliases, owner = self._model_row(conn, name)
            version = resolve_version(name, ref, last, aliases)
            row = conn.execute("SELECT doc FROM model_versions WHERE name=? AND version=?",
                               (name, version)).fetchone()
        if row is None:
            raise not_found("version", f"{name}:{ref}", "model.version")
        return with_aliases(json.loads(row[0]), aliases, owner)

    def list_versions(self, name: str) -> list[dict[str, Any]]:
        with self.db.tx() as conn:
            _, aliases, owner = self._model_row(conn, name)
            rows = conn.execute("SELECT doc FROM model_versions WHERE name=? ORDER BY version",
                                (name,)).fetchall()
        return [with_aliases(json.loads(r[0]), aliases, owner) for r in rows]

    def list_models(self) -> list[dict[str, Any]]:
        with self.db.tx() as conn:
            rows = conn.execute("SELECT name, last_version, aliases, owner FROM models ORDER BY name")
            models = rows.fetchall()
        return [{"name": n, "latest_version": v, "aliases": json.loads(a), "owner": o}
                for n, v, a, o in models]

    def set_alias(self, name: str, alias: str, version: int) -> dict[str, Any]:
        check_alias(alias)
        with self.db.tx() as conn:
            _, aliases, owner = self._model_row(conn, name)
            row = conn.execute("SELECT doc FROM model_versions WHERE name=? AND version=?",
                               (name, version)).fetchone()
            if row is None:
                raise not_found("version", f"{name}:{version}", "model.version")
            aliases[alias] = version
            conn.execute("UPDATE models SET aliases=? WHERE name=?", (_dump(aliases), name))
        return with_aliases(json.loads(row[0]), aliases, owner)

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
            _, aliases, owner = self._model_row(conn, name)
            rows = conn.execute("SELECT doc FROM model_versions WHERE name=? ORDER BY version",
                                (name,)).fetchall()
            for table in ("model_profiles", "model_versions", "models"):
                conn.execute(f"DELETE FROM {table} WHERE name=?", (name,))
        return [with_aliases(json.loads(r[0]), aliases, owner) for r in rows]


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


class SqliteUserStore(UserStore):
    def __init__(self, db: SqliteDatabase) -> None:
        self.db = db

    def create_user(self, username: str, password_hash: str, roles: list[str],
                    created_at: float) -> dict[str, Any]:
        doc = new_user_doc(username, password_hash, roles, created_at)
        with self.db.tx() as conn:
            if conn.execute("SELECT 1 FROM users WHERE username=?", (username,)).fetchone():
                raise username_taken(username)
            conn.execute("INSERT INTO users (id, username, doc) VALUES (?, ?, ?)",
                         (doc["user_id"], username, _dump(doc)))
        return doc

    def _user(self, conn: sqlite3.Connection, user_id: str) -> dict[str, Any]:
        row = conn.execute("SELECT doc FROM users WHERE id=?", (user_id,)).fetchone()
        if row is None:
            raise not_found("user", user_id, "user_id")
        return json.loads(row[0])

    def get_user(self, user_id: str) -> dict[str, Any]:
        with self.db.tx() as conn:
            return self._user(conn, user_id)

    def find_user(self, username: str) -> dict[str, Any] | None:
        with self.db.tx() as conn:
            row = conn.execute("SELECT doc FROM users WHERE username=?", (username,)).fetchone()
        return json.loads(row[0]) if row else None

    def list_users(self) -> list[dict[str, Any]]:
        with self.db.tx() as conn:
            rows = conn.execute("SELECT doc FROM users ORDER BY rowid").fetchall()
        return [json.loads(r[0]) for r in rows]

    def count_users(self) -> int:
        with self.db.tx() as conn:
            return int(conn.execute("SELECT COUNT(*) FROM users").fetchone()[0])

    def update_user(self, user_id: str, fields: dict[str, Any]) -> dict[str, Any]:
        with self.db.tx() as conn:
            doc = self._user(conn, user_id)
            doc.update({k: v for k, v in fields.items() if k in USER_FIELDS})
            conn.execute("UPDATE users SET doc=? WHERE id=?", (_dump(doc), user_id))
        return doc

    def delete_user(self, user_id: str) -> dict[str, Any]:
        with self.db.tx() as conn:
            doc = self._user(conn, user_id)
            conn.execute("DELETE FROM users WHERE id=?", (user_id,))
        return doc

    def create_cluster_token(self, token_id: str, secret_sha256: str, owner: str, name: str,
                             created_at: float) -> dict[str, Any]:
        doc = new_cluster_token_doc(token_id, secret_sha256, owner, name, created_at)
        with self.db.tx() as conn:
            if conn.execute("SELECT 1 FROM cluster_tokens WHERE id=?", (token_id,)).fetchone():
                raise Conflict(f"cluster token {token_id!r} exists",
                               [{"path": "token_id", "message": "taken"}])
            conn.execute("INSERT INTO cluster_tokens (id, doc) VALUES (?, ?)", (token_id, _dump(doc)))
        return doc

    def _token(self, conn: sqlite3.Connection, token_id: str) -> dict[str, Any]:
        row = conn.execute("SELECT doc FROM cluster_tokens WHERE id=?", (token_id,)).fetchone()
        if row is None:
            raise not_found("cluster token", token_id, "token_id")
        return json.loads(row[0])

    def get_cluster_token(self, token_id: str) -> dict[str, Any]:
        with self.db.tx() as conn:
            return self._token(conn, token_id)

    def list_cluster_tokens(self) -> list[dict[str, Any]]:
        with self.db.tx() as conn:
            rows = conn.execute("SELECT doc FROM cluster_tokens ORDER BY rowid").fetchall()
        return [json.loads(r[0]) for r in rows]

    def delete_cluster_token(self, token_id: str) -> dict[str, Any]:
        with self.db.tx() as conn:
            doc = self._token(conn, token_id)
            conn.execute("DELETE FROM cluster_tokens WHERE id=?", (token_id,))
        return doc
