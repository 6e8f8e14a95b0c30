"""Damaged artifacts: never served as good, repaired by uploading the right bytes again.

On both root backends (a file on disk; a GridFS chunk), in the cluster's cache, and at the node,
whose digest failure carries the ``sha256 mismatch`` reason code.
"""

from __future__ import annotations

import hashlib
import http.server
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cluster_orchestrator.artifacts import ArtifactCache
from node_engine.artifacts import ArtifactError, DigestMismatch, fetch_artifact
from root_orchestrator.stores import Stores, open_stores
from root_orchestrator.stores.artifact_base import ArtifactStore
from treeline_common.errors import SHA256_MISMATCH, CorruptArtifact, IntegrityError, NotFound, http_status

DATA = bytes(range(256)) * 1024  # 256 KiB: several store chunks


@pytest.fixture
def stores(mongo_url: str) -> Iterator[Stores]:
    opened = open_stores(mongo_url)
    yield opened
    opened.close()


def corrupt(store: ArtifactStore, sha256: str, offset: int = 1000) -> None:
    """Flip one byte of the stored copy, as a disk or a broken copy would."""
    root = getattr(store, "root", None)
    if root is not None:
        path = Path(root) / sha256[:2] / sha256
        with path.open("r+b") as fh:
            fh.seek(offset)
            byte = fh.read(1)
            fh.seek(offset)
            fh.write(bytes([byte[0] ^ 0xFF]))
        return
    # GridFS: the chunks written again with one byte flipped (the embedded MongoDB server maps
    # chunks onto its own tables: it deletes and inserts them, it does not update one in place).
    chunks = store._files.database[store._files.name.replace(".files", ".chunks")]  # type: ignore[attr-defined]
    docs = sorted(chunks.find({"files_id": sha256}), key=lambda d: d["n"])
    data = bytearray(docs[0]["data"])
    data[offset] ^= 0xFF
    docs[0]["data"] = bytes(data)
    chunks.delete_many({"files_id": sha256})
    for doc in docs:
        chunks.insert_one({"files_id": sha256, "n": doc["n"], "data": doc["data"]})


def test_a_corrupt_artifact_is_not_served(stores: Stores) -> None:
    sha = stores.artifacts.put(DATA).sha256
    assert stores.artifacts.get(sha) == DATA
    corrupt(stores.artifacts, sha)
    readers = (stores.artifacts.get, lambda sha: stores.artifacts.open(sha).read(),
               lambda sha: b"".join(stores.artifacts.iter_bytes(sha)))
    for read in readers:
        with pytest.raises(CorruptArtifact) as caught:
            read(sha)
        assert caught.value.details[0]["path"] == "sha256"
        assert "upload the right bytes" in caught.value.message
    assert http_status(CorruptArtifact("x")) == 409 and isinstance(CorruptArtifact("x"), IntegrityError)
    assert stores.artifacts.exists(sha) and stores.artifacts.size(sha) == len(DATA)  # metadata still answers


def test_a_reupload_repairs_a_corrupt_artifact(stores: Stores) -> None:
    sha = stores.artifacts.put(DATA).sha256
    corrupt(stores.artifacts, sha)
    repaired = stores.artifacts.put(DATA, expected_sha256=sha)
    assert repaired.created is True  # not "already stored": the damaged copy was replaced
    assert stores.artifacts.get(sha) == DATA
    assert stores.artifacts.put(DATA, expected_sha256=sha).created is False  # a sound copy stays


def test_a_reupload_from_a_file_repairs_too(stores: Stores, tmp_path: Path) -> None:
    sha = stores.artifacts.put(DATA).sha256
    corrupt(stores.artifacts, sha)
    spooled = tmp_path / "upload"
    spooled.write_bytes(DATA)
    assert stores.artifacts.put_file(spooled, sha).created is True
    assert b"".join(stores.artifacts.iter_bytes(sha)) == DATA
    wrong = tmp_path / "wrong"
    wrong.write_bytes(b"other")
    with pytest.raises(IntegrityError):
        stores.artifacts.put_file(wrong, sha)


def test_absent_artifacts_stay_not_found(stores: Stores) -> None:
    missing = hashlib.sha256(b"absent").hexdigest()
    with pytest.raises(NotFound):
        stores.artifacts.get(missing)
    with pytest.raises(NotFound):
        stores.artifacts.verify(missing)


# -- the cluster's cache ----------------------------------------------------------------------------

def test_the_cluster_cache_drops_a_corrupt_file_and_fetches_again(tmp_path: Path) -> None:
    cache = ArtifactCache(tmp_path)
    sha = hashlib.sha256(DATA).hexdigest()
    cache.put(sha, DATA)
    path = tmp_path / sha
    damaged = bytearray(path.read_bytes())
    damaged[5] ^= 1
    path.write_bytes(bytes(damaged))
    assert cache.get(sha) is None and not path.exists()
    downloads: list[int] = []
    assert cache.fetch(sha, lambda: downloads.append(1) or DATA) == DATA
    assert downloads == [1] and cache.get(sha) == DATA


# -- the node ---------------------------------------------------------------------------------------

class _Serve(http.server.BaseHTTPRequestHandler):
    body = b""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture()
def server() -> Iterator[tuple[str, type[_Serve]]]:
    handler = type("Handler", (_Serve,), {})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/a", handler
    httpd.shutdown()
    httpd.server_close()


def test_the_node_reports_a_digest_mismatch_with_its_reason_code(tmp_path: Path,
                                                                 server: tuple[str, type[_Serve]]) -> None:
    url, handler = server
    handler.body = b"wrong bytes"
    expected = hashlib.sha256(DATA).hexdigest()
    with pytest.raises(DigestMismatch) as caught:
        fetch_artifact(url, expected, tmp_path)
    assert isinstance(caught.value, ArtifactError)
    assert str(caught.value).startswith(SHA256_MISMATCH + ":")
    assert caught.value.expected == expected
    assert caught.value.got == hashlib.sha256(b"wrong bytes").hexdigest()
    assert os.listdir(tmp_path) == []  # nothing kept
    handler.body = DATA
    assert fetch_artifact(url, expected, tmp_path).read_bytes() == DATA
