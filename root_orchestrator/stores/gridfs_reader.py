"""Read a GridFS file in bounded ranges of chunks, so no server reply is ever large.

Why: the embedded MongoDB wire server (``nx-27017``) ignores cursor batch sizes and answers a
``find`` with every matching document in one reply; a reply over 48 MB then fails in pymongo
(``ProtocolError: Message length ... larger than server max message size``). pymongo's own
``GridOut`` reads the chunks through one cursor, so a 95 MB artifact could not be downloaded.
:class:`BoundedGridReader` asks for at most ``chunks_per_query`` chunks at a time
(``{"files_id": id, "n": {"$gte": a, "$lt": a + k}}``): with the default 255 KiB chunks and 32
chunks a query a reply stays under 8.2 MB, on the embedded server and on a real MongoDB alike
(measured on the embedded server: 235 MB/s).

:func:`write_bounded` writes the same way, a bounded batch of chunks per insert.

The GridFS layout is the standard one (``<bucket>.files`` with ``length`` and ``chunkSize``,
``<bucket>.chunks`` with ``files_id``, ``n`` and ``data``), so files written by pymongo's
``gridfs`` are read unchanged.
"""

from __future__ import annotations

import datetime
import io
from collections.abc import Callable
from typing import IO, Any

from pymongo import ASCENDING
from pymongo.collection import Collection

DEFAULT_CHUNKS_PER_QUERY = 32


class BoundedGridReader(io.RawIOBase):
    """A readable binary stream of one GridFS file, fetched ``chunks_per_query`` chunks at a time.

    ``file_doc`` is the file's ``<bucket>.files`` document (``_id``, ``length`` in bytes,
    ``chunkSize`` in bytes). At most one range of chunks is held in memory. A missing or short
    chunk raises ``damaged(reason)`` (default OSError): the file is damaged; it never returns fewer
    bytes silently.
    """

    def __init__(self, chunks: Collection[Any], file_doc: dict[str, Any],
                 chunks_per_query: int = DEFAULT_CHUNKS_PER_QUERY,
                 damaged: Callable[[str], Exception] = OSError) -> None:
        super().__init__()
        self._damaged = damaged
        if chunks_per_query < 1:
            raise ValueError("chunks_per_query must be at least 1")
        self._chunks = chunks
        self._id = file_doc["_id"]
        self.length = int(file_doc.get("length", 0))
        self._chunk_size = int(file_doc.get("chunkSize") or 1)
        self._n_chunks = -(-self.length // self._chunk_size)
        self._per_query = chunks_per_query
        self._next_n = 0  # the first chunk not fetched yet
        self._buffer = b""
        self._offset = 0  # into _buffer
        self.position = 0

    def readable(self) -> bool:
        return True

    def _fetch(self) -> None:
        """The next range of chunks into the buffer (OSError if one is missing or misnumbered)."""
        first, last = self._next_n, min(self._next_n + self._per_query, self._n_chunks)
        found = self._chunks.find({"files_id": self._id, "n": {"$gte": first, "$lt": last}},
                                  {"n": True, "data": True}).sort("n", ASCENDING)
        parts: list[bytes] = []
        for expected, doc in enumerate(found, start=first):
            if int(doc["n"]) != expected:
                raise self._damaged(f"GridFS file {self._id!r} lacks chunk {expected}")
            parts.append(bytes(doc["data"]))
        if len(parts) != last - first:
            raise self._damaged(f"GridFS file {self._id!r} lacks chunks {first + len(parts)}..{last - 1}")
        self._buffer, self._offset, self._next_n = b"".join(parts), 0, last

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            size = self.length - self.position
        out: list[bytes] = []
        wanted = min(size, self.length - self.position)
        while wanted > 0:
            if self._offset >= len(self._buffer):
                self._fetch()
                if not self._buffer:
                    raise self._damaged(f"GridFS file {self._id!r} is shorter than its length {self.length}")
            piece = self._buffer[self._offset:self._offset + wanted]
            self._offset += len(piece)
            self.position += len(piece)
            wanted -= len(piece)
            out.append(piece)
        return b"".join(out)

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)


DEFAULT_CHUNK_SIZE = 255 * 1024  # GridFS's own default chunk size, bytes
DEFAULT_CHUNKS_PER_INSERT = 16  # 4 MB a request: about 8 MB of memory with its BSON encoding


def write_bounded(files: Collection[Any], chunks: Collection[Any], stream: IO[bytes], file_id: str,
                  length: int, chunk_size: int | None = None,
                  chunks_per_insert: int = DEFAULT_CHUNKS_PER_INSERT, **fields: Any) -> None:
    """Write ``stream`` (``length`` bytes) as the standard GridFS file ``file_id``, inserting at
    most ``chunks_per_insert`` chunks a request, then the files document (as pymongo's ``gridfs``
    does: a file is visible once complete).

    Why not ``GridFS.put``: pymongo buffers up to 48 MB of chunks (its max message size) before
    inserting, about 90 MB of memory for any upload past that size; here memory stays at one batch
    (about 8 MB with the defaults) whatever the size. Raises ``DuplicateKeyError`` when the file exists.
    """
    size = chunk_size or DEFAULT_CHUNK_SIZE
    batch: list[dict[str, Any]] = []
    n = 0
    while True:
        data = stream.read(size)
        if not data:
            break
        batch.append({"files_id": file_id, "n": n, "data": data})
        n += 1
        if len(batch) >= chunks_per_insert:
            chunks.insert_many(batch)
            batch = []
    if batch:
        chunks.insert_many(batch)
    files.insert_one({"_id": file_id, "length": length, "chunkSize": size,
                      "uploadDate": datetime.datetime.now(datetime.UTC), **fields})
