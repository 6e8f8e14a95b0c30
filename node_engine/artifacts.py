"""Download partitions by URL into the data dir and verify them against their sha256.

The deploy command names the digest the cluster computed; a node MUST refuse bytes that
do not match (a truncated transfer or a wrong artifact would otherwise be served as if
it were the planned partition). Files are content-addressed (``<sha256>.onnx``), so a
partition already on disk is verified and reused instead of downloaded again.

A node also refuses bytes it has no room for: with ``max_bytes`` an artifact that announces a
larger ``Content-Length`` is refused before any byte is read, and one that streams past the
limit is cut off there (:class:`ArtifactTooLarge`), so an oversized partition never fills the
disk or the memory of a small device.

The cluster serves its artifacts only to callers with a join token when it has join tokens: the
node engine sends the one it registered with (``token``) as ``Authorization: Bearer <token>``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from pathlib import Path

from treeline_common.errors import SHA256_MISMATCH

log = logging.getLogger(__name__)

CHUNK = 1 << 20


class ArtifactError(Exception):
    """A partition that could not be fetched or does not match its digest."""


class DownloadCancelled(ArtifactError):
    """The node is shutting down; the download stopped half-way."""


class DigestMismatch(ArtifactError):
    """The bytes served do not hash to the digest the command named. The message (reported as the
    stage's FAILED reason) starts with :data:`SHA256_MISMATCH` so the cluster can tell this from
    any other failure and fetch the artifact again rather than serve the same bytes."""

    def __init__(self, expected: str, got: str) -> None:
        super().__init__(f"{SHA256_MISMATCH}: expected {expected} got {got}")
        self.expected = expected
        self.got = got


class ArtifactTooLarge(ArtifactError):
    """The artifact is larger than ``limit`` bytes. ``size`` is its announced or on-disk size,
    or None when the transfer was cut off at the limit without announcing one."""

    def __init__(self, size: int | None, limit: int) -> None:
        what = f"{size} bytes" if size is not None else f"more than {limit} bytes"
        super().__init__(f"artifact is {what}, over the {limit} bytes this node can take")
        self.size = size
        self.limit = limit


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fetch_artifact(
    url: str,
    expected_sha256: str,
    data_dir: Path,
    *,
    stop: threading.Event | None = None,
    timeout: float = 30.0,
    token: str | None = None,
    max_bytes: int | None = None,
) -> Path:
    """Return the local path of the verified artifact, downloading it when needed.

    The body is streamed to a temporary file while hashing in chunks; on a mismatch the
    file is deleted and :class:`DigestMismatch` says ``sha256 mismatch: expected X got Y``
    (:data:`treeline_common.errors.SHA256_MISMATCH` is the reason code a cluster matches).
    ``token`` (the node's join token), when given, goes as ``Authorization: Bearer <token>``.
    ``max_bytes``: refuse (:class:`ArtifactTooLarge`) an artifact larger than that, on disk,
    announced or streamed; the partial file is deleted.
    """
    import requests

    expected = expected_sha256.lower()
    data_dir.mkdir(parents=True, exist_ok=True)
    final = data_dir / f"{expected}.onnx"
    if final.exists():
        size = final.stat().st_size
        if max_bytes is not None and size > max_bytes:
            raise ArtifactTooLarge(size, max_bytes)  # kept: the same bytes may fit a later budget
        if sha256_file(final) == expected:
            log.info("artifact %s already on disk", expected[:12])
            return final
        final.unlink(missing_ok=True)
    partial = data_dir / f"{expected}.{os.getpid()}.{threading.get_ident()}.part"
    digest = hashlib.sha256()
    try:
        headers = {"Authorization": f"Bearer {token}"} if token else None
        with requests.get(url, stream=True, timeout=timeout, headers=headers) as response:
            if response.status_code >= 400:
                raise ArtifactError(f"download failed: HTTP {response.status_code} from {url}")
            announced = _content_length(response.headers.get("Content-Length"))
            if max_bytes is not None and announced is not None and announced > max_bytes:
                raise ArtifactTooLarge(announced, max_bytes)
            received = 0
            with partial.open("wb") as fh:
                for chunk in response.iter_content(chunk_size=CHUNK):
                    if stop is not None and stop.is_set():
                        raise DownloadCancelled("download cancelled: node is stopping")
                    received += len(chunk)
                    if max_bytes is not None and received > max_bytes:
                        raise ArtifactTooLarge(None, max_bytes)
                    digest.update(chunk)
                    fh.write(chunk)
    except requests.RequestException as exc:
        partial.unlink(missing_ok=True)
        raise ArtifactError(f"download failed: {exc}") from None
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    got = digest.hexdigest()
    if got != expected:
        partial.unlink(missing_ok=True)
        raise DigestMismatch(expected, got)
    partial.replace(final)
    return final


def _content_length(value: str | None) -> int | None:
    """The announced body size in bytes, or None when absent or not a non-negative integer."""
    if value is None or not value.strip().isdigit():
        return None
    return int(value.strip())
