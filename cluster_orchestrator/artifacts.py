"""The cluster's own content-addressed artifact cache: the models and partitions its nodes load.

Why the cluster serves them rather than the root: a re-plan after a node failure must not
depend on the root being reachable (Oakestra's lesson: root and cluster are separate
failure domains). The cluster fetches a model from the root once, keeps it here by its
sha256, cuts partitions from it, keeps them here too and serves both at
``GET /api/artifacts/<sha256>`` to its nodes, which verify the digest themselves. The root
also gets a copy of each partition, best effort (lineage and the UI read it there).

Contract: :meth:`put` stores bytes under their own digest (it refuses bytes whose sha256
differs), :meth:`get` returns them or None; both are thread-safe. With a folder, files
survive a restart of the cluster (written atomically: temp file + rename); without one
(tests) bytes are kept in memory.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

from treeline_common.errors import IntegrityError, InvalidInput

log = logging.getLogger(__name__)

_SHA = re.compile(r"[0-9a-f]{64}")


def check_sha(sha256: str) -> str:
    """The digest in lower case; InvalidInput unless it is 64 hex digits."""
    sha = sha256.lower()
    if not _SHA.fullmatch(sha):
        raise InvalidInput("bad artifact digest", [{"path": "sha256", "message": "must be 64 hex digits"}])
    return sha


class ArtifactCache:
    """Bytes by sha256, in ``folder`` (persistent) or in memory (``folder=None``)."""

    def __init__(self, folder: Path | None = None) -> None:
        self._folder = folder
        self._lock = threading.Lock()
        self._memory: dict[str, bytes] = {}

    def put(self, sha256: str, data: bytes) -> None:
        """Store ``data`` under ``sha256``; IntegrityError when the bytes do not hash to it."""
        sha = check_sha(sha256)
        actual = hashlib.sha256(data).hexdigest()
        if actual != sha:
            raise IntegrityError(f"artifact bytes hash to {actual}, not {sha}")
        if self._folder is None:
            with self._lock:
                self._memory[sha] = data
            return
        path = self._folder / sha
        if path.exists():
            return
        self._folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self._folder, prefix=".incoming-")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def fetch(self, sha256: str, download: Callable[[], bytes]) -> bytes:
        """The bytes under ``sha256``, calling ``download`` (and keeping its answer) when absent."""
        data = self.get(sha256)
        if data is None:
            data = download()
            self.put(sha256, data)
        return data

    def get(self, sha256: str) -> bytes | None:
        """The bytes stored under ``sha256``, or None (also when the file no longer hashes to it)."""
        sha = check_sha(sha256)
        if self._folder is None:
            with self._lock:
                return self._memory.get(sha)
        path = self._folder / sha
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        if hashlib.sha256(data).hexdigest() != sha:  # damaged on disk: drop it, the next fetch re-downloads
            log.error("cached artifact %s is corrupt; dropped", sha)
            path.unlink(missing_ok=True)
            return None
        return data
