"""Artifacts in MongoDB's GridFS (the :class:`~root_orchestrator.stores.artifact_base.ArtifactStore`
of the Mongo backend), split from :mod:`root_orchestrator.stores.mongo`.

Each artifact is a GridFS file whose ``_id`` is its sha256; reads go through
:class:`~root_orchestrator.stores.gridfs_reader.BoundedGridReader`, so no reply exceeds
``chunk_size * chunks_per_query`` bytes (MongoDB's 16 MB message limit, and wire servers with less).
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
from collections.abc import Hashable
from pathlib import Path
from typing import IO, cast

import gridfs
from pymongo.database import Database
from pymongo.errors import DuplicateKeyError

from root_orchestrator.stores.artifact_base import (
    ArtifactStore,
    Data,
    PutResult,
    corrupt_artifact,
    iter_chunks,
)
from root_orchestrator.stores.base import check_sha256, not_found
from root_orchestrator.stores.gridfs_reader import DEFAULT_CHUNKS_PER_QUERY, BoundedGridReader, write_bounded
from treeline_common.errors import CorruptArtifact, IntegrityError

log = logging.getLogger(__name__)

class MongoArtifactStore(ArtifactStore):
    """Artifacts as GridFS files named by their sha256 (``_id``), read back in bounded ranges of
    ``chunks_per_query`` chunks (no reply above ``chunk_size * chunks_per_query`` bytes);
    ``chunk_size`` is GridFS's own default (255 KiB) unless given."""

    def __init__(self, db: Database, collection: str = "artifacts", *, chunk_size: int | None = None,
                 chunks_per_query: int = DEFAULT_CHUNKS_PER_QUERY) -> None:
        self.fs = gridfs.GridFS(db, collection=collection)
        self._files = db[f"{collection}.files"]
        self._chunks = db[f"{collection}.chunks"]
        self._chunk_size = chunk_size
        self._chunks_per_query = chunks_per_query

    def put(self, data: Data, expected_sha256: str | None = None) -> PutResult:
        if expected_sha256 is not None:
            check_sha256(expected_sha256)
        # Hash first (GridFS needs the _id up front); spool to disk past 8 MiB.
        with tempfile.SpooledTemporaryFile(max_size=8 << 20) as spool:
            digest = hashlib.sha256()
            size = 0
            for chunk in iter_chunks(data):
                digest.update(chunk)
                size += len(chunk)
                spool.write(chunk)
            sha256 = digest.hexdigest()
            _check_digest(sha256, expected_sha256)
            spool.seek(0)
            return self._place(spool, sha256, size)

    def put_file(self, path: Path, expected_sha256: str | None = None) -> PutResult:
        """Hash ``path``, then copy it into GridFS straight from the file (no second spool)."""
        if expected_sha256 is not None:
            check_sha256(expected_sha256)
        digest = hashlib.sha256()
        size = 0
        with path.open("rb") as stream:
            for chunk in iter_chunks(stream):
                digest.update(chunk)
                size += len(chunk)
            sha256 = digest.hexdigest()
            _check_digest(sha256, expected_sha256)
            stream.seek(0)
            return self._place(stream, sha256, size)

    def _place(self, verified: IO[bytes], sha256: str, size: int) -> PutResult:
        """Store ``verified`` (bytes hashing to ``sha256``) unless a sound copy is there already;
        a damaged stored copy is deleted and replaced (``created`` True)."""
        if self.fs.exists(sha256):
            if self.stored_digest(sha256) == sha256:
                return PutResult(sha256, size, created=False)
            log.warning("artifact %s was corrupt in GridFS; replaced by the bytes just uploaded", sha256)
            self.fs.delete(sha256)
            self._forget(sha256)
        try:  # bounded batches: pymongo's GridFS.put holds up to 48 MB of chunks (gridfs_reader)
            write_bounded(self._files, self._chunks, verified, sha256, size, self._chunk_size,
                          filename=sha256)
        except (gridfs.errors.FileExists, DuplicateKeyError):
            return PutResult(sha256, size, created=False)
        log.debug("stored artifact %s (%d bytes) in GridFS", sha256, size)
        return PutResult(sha256, size, created=True)

    def _open_raw(self, sha256: str) -> IO[bytes]:
        check_sha256(sha256)
        doc = self._files.find_one({"_id": sha256})
        if doc is None:
            raise not_found("artifact", sha256, "sha256")
        return cast(IO[bytes], BoundedGridReader(self._chunks, doc, self._chunks_per_query,
                                                 damaged=lambda why: self._damaged(sha256, why)))

    def _damaged(self, sha256: str, why: str) -> CorruptArtifact:
        """A stored file with chunks missing: corrupt (409, repaired by uploading it again)."""
        self._forget(sha256)
        log.error("artifact %s is incomplete in GridFS: %s", sha256, why)
        return corrupt_artifact(sha256, "incomplete")

    def stored_digest(self, sha256: str) -> str:
        """As the base class; a file with a missing chunk reads as damaged (never as a NotFound)."""
        try:
            return super().stored_digest(sha256)
        except CorruptArtifact:
            return "incomplete"

    def _fingerprint(self, sha256: str) -> Hashable | None:
        doc = self._files.find_one({"_id": sha256}, {"length": True, "uploadDate": True})
        if doc is None:
            return None
        return (doc.get("length"), str(doc.get("uploadDate")))

    def exists(self, sha256: str) -> bool:
        check_sha256(sha256)
        return bool(self.fs.exists(sha256))

    def size(self, sha256: str) -> int:
        check_sha256(sha256)
        doc = self._files.find_one({"_id": sha256}, {"length": True})
        if doc is None:
            raise not_found("artifact", sha256, "sha256")
        return int(doc["length"])

    def delete(self, sha256: str) -> bool:
        self._forget(sha256)
        if not self.exists(sha256):
            return False
        self.fs.delete(sha256)
        return True


def _check_digest(sha256: str, expected_sha256: str | None) -> None:
    """IntegrityError naming ``sha256`` when bytes that hash to ``sha256`` were expected to hash to
    ``expected_sha256`` (None: nothing expected)."""
    if expected_sha256 is not None and sha256 != expected_sha256:
        raise IntegrityError("artifact bytes do not match their sha256", [
            {"path": "sha256", "message": f"expected {expected_sha256}, got {sha256}"}])
