"""GridFS artifacts on the embedded MongoDB wire server: reads stay bounded, damage is caught.

The embedded server (nx-27017) answers a ``find`` with every match in one reply, whatever the
batch size, and a reply over 48 MB fails; the artifact store therefore reads chunks in ranges
of ``chunks_per_query``. An artifact over 48 MB would make this test too slow for CI, so the
bound is checked with a small chunk size instead: 1 KiB chunks, 4 per query, every reply the
client receives from ``artifacts.chunks`` counted by a pymongo command listener.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from typing import Any

import pymongo
import pytest
from pymongo import monitoring

from root_orchestrator.stores.mongo_artifacts import MongoArtifactStore
from treeline_common.errors import CorruptArtifact

CHUNKS = "artifacts.chunks"


class ChunkReplies(monitoring.CommandListener):
    """The number of chunk documents in each reply to a ``find``/``getMore`` on the chunks."""

    def __init__(self) -> None:
        self.requests: set[int] = set()
        self.sizes: list[int] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        target = event.command.get("find") or event.command.get("collection")
        if event.command_name in ("find", "getMore") and target == CHUNKS:
            self.requests.add(event.request_id)

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        if event.request_id in self.requests:
            cursor = event.reply.get("cursor", {})
            self.sizes.append(len(cursor.get("firstBatch", cursor.get("nextBatch", []))))

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        return None


@pytest.fixture
def client_and_replies(mongo_url: str) -> Iterator[tuple[pymongo.MongoClient[dict[str, Any]], ChunkReplies]]:
    replies = ChunkReplies()
    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(mongo_url, event_listeners=[replies])
    yield client, replies
    client.close()


def test_reads_are_bounded_to_chunks_per_query(
        client_and_replies: tuple[pymongo.MongoClient[dict[str, Any]], ChunkReplies]) -> None:
    client, replies = client_and_replies
    store = MongoArtifactStore(client.get_default_database(), chunk_size=1024, chunks_per_query=4)
    data = os.urandom(50_000)  # 49 chunks
    sha = store.put(data).sha256
    replies.sizes.clear()
    assert store.get(sha) == data
    assert b"".join(store.iter_bytes(sha)) == data
    assert replies.sizes and max(replies.sizes) <= 4
    assert sum(replies.sizes) >= 2 * 49  # every chunk was read, twice (get and iter_bytes)
    assert store.size(sha) == len(data)


def test_missing_chunks_read_as_corrupt_and_a_put_repairs_them(
        client_and_replies: tuple[pymongo.MongoClient[dict[str, Any]], ChunkReplies]) -> None:
    client, _ = client_and_replies
    db = client.get_default_database()
    store = MongoArtifactStore(db, chunk_size=1024, chunks_per_query=4)
    data = os.urandom(10_000)
    sha = store.put(data).sha256
    # Its chunks gone (the embedded server deletes chunks only file by file, as pymongo's GridFS does).
    assert db[CHUNKS].delete_many({"files_id": sha}).deleted_count == 10
    fresh = MongoArtifactStore(db, chunk_size=1024, chunks_per_query=4)  # nothing verified yet
    with pytest.raises(CorruptArtifact):
        fresh.get(sha)
    with pytest.raises(CorruptArtifact):  # also a reader that had verified it before
        b"".join(store.iter_bytes(sha))
    assert fresh.put(data).created  # the damaged copy is replaced
    assert fresh.get(sha) == data and hashlib.sha256(fresh.get(sha)).hexdigest() == sha
