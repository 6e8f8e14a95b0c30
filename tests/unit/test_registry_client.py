"""``RootClient.download_model`` over real HTTP against a stand-in root: the bytes land at the
destination only when they hash to the version's sha256 (a damaged transfer leaves nothing)."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask, Response, jsonify
from werkzeug.serving import make_server

from treeline_cli.root_client import RootClient
from treeline_common.errors import IntegrityError, NotFound
from treeline_common.netutil import free_port

GOOD = b"onnx bytes " * 20000  # 220 kB: several chunks
GOOD_DOC = {"name": "m", "version": 1, "sha256": hashlib.sha256(GOOD).hexdigest(), "size": len(GOOD)}


@pytest.fixture
def root() -> Iterator[tuple[str, dict[str, bytes]]]:
    """The stand-in's URL and what its artifact route sends (``sent["body"]``)."""
    app = Flask("stand-in-root")
    sent: dict[str, bytes] = {"body": GOOD}

    @app.get("/api/models/<name>/versions/<ref>")
    def version(name: str, ref: str) -> Any:
        if name != "m":
            return jsonify({"error": {"code": "NOT_FOUND", "message": "no model 'x'", "details": []}}), 404
        return jsonify(GOOD_DOC)

    @app.get("/api/models/m/versions/1/artifact")
    def artifact() -> Any:
        return Response(sent["body"], mimetype="application/octet-stream")

    port = free_port()
    server = make_server("127.0.0.1", port, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{port}", sent
    server.shutdown()
    thread.join()


@pytest.mark.parametrize("body, ok", [(GOOD, True), (GOOD[:-1] + b"X", False), (GOOD[:1000], False)])
def test_download_keeps_only_bytes_that_match_the_digest(root: tuple[str, dict[str, bytes]], tmp_path: Path,
                                                         body: bytes, ok: bool) -> None:
    root_url, sent = root
    sent["body"] = body
    client = RootClient(root_url, token="t")
    dest = tmp_path / "m.onnx"
    seen: list[tuple[int, int]] = []
    if ok:
        got = client.download_model("m", "latest", dest, lambda done, total: seen.append((done, total)))
        assert dest.read_bytes() == GOOD and got["sha256"] == hashlib.sha256(GOOD).hexdigest()
        assert seen[-1] == (len(GOOD), len(GOOD)) and len(seen) > 1
    else:
        with pytest.raises(IntegrityError):
            client.download_model("m", "latest", dest)
        assert not dest.exists()
    assert not (tmp_path / "m.onnx.part").exists()


def test_download_of_a_missing_model_is_the_roots_error(root: tuple[str, dict[str, bytes]],
                                                       tmp_path: Path) -> None:
    with pytest.raises(NotFound):
        RootClient(root[0], token="t").download_model("x", 1, tmp_path / "x.onnx")
    assert list(tmp_path.iterdir()) == []
