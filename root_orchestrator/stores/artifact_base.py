"""The artifact store interface: content-addressed bytes (models, partitions), written once.

Split from :mod:`root_orchestrator.stores.base` (the other store interfaces): an
:class:`ArtifactStore` names every artifact by the sha256 of its bytes, verifies what it hands
out (:class:`CorruptArtifact` when stored bytes changed) and streams large artifacts in
:data:`CHUNK` pieces. Its backend: GridFS, in
:mod:`root_orchestrator.stores.mongo_artifacts`.
"""

from __future__ import annotations

import hashlib
import io
import logging
from abc import ABC, abstractmethod
from collections.abc import Hashable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, cast

from root_orchestrator.stores.base import CHUNK
from treeline_common.errors import CorruptArtifact

log = logging.getLogger(__name__)

Data = bytes | bytearray | memoryview | IO[bytes]

def iter_chunks(data: Data) -> Iterator[bytes]:
    """Bytes or a readable binary stream, as chunks, so large artifacts never sit in memory twice."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        view = memoryview(data)
        for start in range(0, len(view), CHUNK):
            yield bytes(view[start:start + CHUNK])
        return
    while True:
        chunk = data.read(CHUNK)
        if not chunk:
            return
        yield chunk


@dataclass(frozen=True)
class PutResult:
    sha256: str
    size: int
    created: bool  # False when the artifact was already stored (put is idempotent)


class ArtifactStore(ABC):
    """Content-addressed bytes (whole models and partitions), keyed by their sha256.

    ``put`` MUST be idempotent and atomic: a reader never sees a partial artifact, and the
    same bytes stored twice are stored once. With ``expected_sha256`` a mismatch raises
    IntegrityError and stores nothing. A ``put`` of bytes already stored re-checks the stored
    copy and replaces it when it no longer hashes to its name (``created`` is then True): a
    damaged file is repaired by uploading the right bytes again.

    Readers never get damaged bytes as good: ``open``/``get``/``iter_bytes`` check the stored
    bytes against their name first (once per stored version: a backend's :meth:`_fingerprint`
    keys the result) and raise :class:`CorruptArtifact` (409) on a mismatch; ``iter_bytes`` also
    hashes while streaming and stops before the last chunk if the digest differs, so a client
    sees a truncated body, never a complete wrong one.
    """

    staging_dir: Path | None = None  # where uploads are spooled so put_file can move them into place

    @abstractmethod
    def put(self, data: Data, expected_sha256: str | None = None) -> PutResult: ...

    def put_file(self, path: Path, expected_sha256: str | None = None) -> PutResult:
        """Store a file's bytes (e.g. a spooled upload); a backend may move the file instead of
        copying it. The caller deletes ``path`` afterwards if it is still there."""
        with path.open("rb") as stream:
            return self.put(stream, expected_sha256)

    @abstractmethod
    def _open_raw(self, sha256: str) -> IO[bytes]:
        """The stored bytes unchecked (caller closes); NotFound if absent."""

    def _fingerprint(self, sha256: str) -> Hashable | None:
        """Something that changes whenever the stored bytes may have (size, mtime, inode...),
        so a verified artifact is not re-hashed on every read; None: verify every time."""
        return None

    def stored_digest(self, sha256: str) -> str:
        """The sha256 of the bytes stored under ``sha256`` (hashed now); NotFound if absent."""
        digest = hashlib.sha256()
        with self._open_raw(sha256) as stream:
            for chunk in iter_chunks(stream):
                digest.update(chunk)
        return digest.hexdigest()

    def verify(self, sha256: str) -> None:
        """CorruptArtifact unless the stored bytes hash to ``sha256``; NotFound if absent."""
        fingerprint = self._fingerprint(sha256)
        verified = _verified(self)
        if fingerprint is not None and verified.get(sha256) == fingerprint:
            return
        got = self.stored_digest(sha256)
        if got != sha256:
            log.error("artifact %s is corrupt: its stored bytes hash to %s", sha256, got)
            raise corrupt_artifact(sha256, got)
        if fingerprint is not None:
            if len(verified) > 100_000:
                verified.clear()
            verified[sha256] = fingerprint

    def _forget(self, sha256: str) -> None:
        """Hash ``sha256`` again on its next read (its bytes were replaced or found damaged)."""
        _verified(self).pop(sha256, None)

    def open(self, sha256: str) -> IO[bytes]:
        """A readable binary stream of verified bytes (caller closes it); NotFound if absent,
        CorruptArtifact if the stored bytes no longer match ``sha256`` (now, or at the end of the
        stream if they changed since they were verified)."""
        self.verify(sha256)
        return cast(IO[bytes], _Verifying(self, sha256, self._open_raw(sha256)))

    def get(self, sha256: str) -> bytes:
        with self.open(sha256) as stream:
            return stream.read()

    def iter_bytes(self, sha256: str) -> Iterator[bytes]:
        """Chunks of the artifact; verifies and opens eagerly, so NotFound and CorruptArtifact are
        raised before streaming starts. The stream hashes too: bytes that changed since they were
        verified stop it before its last chunk (CorruptArtifact), so no client gets all of them."""
        stream = self.open(sha256)

        def _gen() -> Iterator[bytes]:
            with stream:
                held: bytes | None = None  # one chunk behind: the stream checks at its end
                for chunk in iter_chunks(stream):
                    if held is not None:
                        yield held
                    held = chunk
                if held is not None:
                    yield held

        return _gen()

    @abstractmethod
    def exists(self, sha256: str) -> bool: ...

    @abstractmethod
    def size(self, sha256: str) -> int:
        """Size in bytes; NotFound if absent."""

    @abstractmethod
    def delete(self, sha256: str) -> bool:
        """True if something was deleted."""


class _Verifying(io.RawIOBase):
    """A stored artifact's stream that hashes what is read and raises CorruptArtifact at its end
    when the bytes do not hash to their name."""

    def __init__(self, store: ArtifactStore, sha256: str, raw: IO[bytes]) -> None:
        super().__init__()
        self._store, self._sha256, self._raw = store, sha256, raw
        self._digest = hashlib.sha256()
        self._checked = False

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            return b"".join(iter(lambda: self.read(CHUNK), b""))
        data = self._raw.read(size)
        if data:
            self._digest.update(data)
        elif size and not self._checked:
            self._checked = True
            got = self._digest.hexdigest()
            if got != self._sha256:
                self._store._forget(self._sha256)
                log.error("artifact %s changed since it was verified", self._sha256)
                raise corrupt_artifact(self._sha256, got)
        return data

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)

    def close(self) -> None:
        try:
            self._raw.close()
        finally:
            super().close()


def _verified(store: ArtifactStore) -> dict[str, Hashable]:
    """``{sha256: fingerprint}`` of the artifacts whose stored bytes were hashed and matched,
    one per store object (made on first use: backends need not call a base ``__init__``)."""
    found: dict[str, Hashable] = store.__dict__.setdefault("_verified_fingerprints", {})
    return found


def corrupt_artifact(sha256: str, got: str) -> CorruptArtifact:
    return CorruptArtifact(
        f"artifact {sha256} is corrupt on this store (its bytes hash to {got}); "
        "upload the right bytes again (PUT /api/artifacts/<sha256>) to repair it",
        [{"path": "sha256", "message": f"stored bytes hash to {got}"}])
