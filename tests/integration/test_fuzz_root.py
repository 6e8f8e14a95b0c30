"""The root as a real process under malformed input: no request reaches a 500.

- Schemathesis over the root's own OpenAPI document (``GET /api/openapi.json``): a few positive
  and negative cases per operation (about 10 s in all), sent with Admin's token when the root has
  ``POST /api/auth/login`` (development mode), else without one.
- A 200 MB model upload raises the root's RSS by at most 50 MB (streamed to disk).
- Limits over real HTTP: 413 with the error body (not a reset connection) for a model over a
  lowered ``TREELINE_MAX_MODEL_MB``, with and without Content-Length, and for a 5 MiB SLA.
- Broken HTTP framing (a bad or lying Content-Length) gets a 4xx, never a 5xx.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from benchmarks.hardening import (
    RootProcess,
    file_chunks,
    fuzz_root,
    root_process,
    upload_peak_rss,
    write_big_onnx,
)

pytestmark = pytest.mark.integration

EXAMPLES = 10  # per operation and mode: about 900 requests, 10 s


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RootProcess]:
    with root_process(tmp_path_factory.mktemp("fuzz") / "root", env={"TREELINE_MAX_MODEL_MB": "300"}) as proc:
        yield proc


def error_of(response: requests.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, (response.status_code, response.text[:300])
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "details"}
    assert body["error"]["code"] == code
    return dict(body["error"])


def test_schemathesis_finds_no_server_error(root: RootProcess) -> None:
    found = fuzz_root(root.url, root.headers(), EXAMPLES)
    assert found["server_errors"] == 0, json.dumps(found["server_error_samples"], indent=1)[:4000]
    assert found["fuzz_operations"] >= 30 and found["schemathesis_cases"] >= 5 * found["fuzz_operations"]


def test_a_200_mb_upload_is_streamed(root: RootProcess, tmp_path: Path) -> None:
    measured = upload_peak_rss(root, 200, tmp_path)
    assert measured["upload_status"] == 201, measured
    assert measured["upload_peak_rss_mb"] <= 50, measured


def test_limits_answer_413_with_the_error_body_over_http(tmp_path: Path) -> None:
    model = tmp_path / "m.onnx"
    write_big_onnx(model, 3 << 20)
    with root_process(tmp_path / "root", env={"TREELINE_MAX_MODEL_MB": "1"}) as small:
        headers = {**small.headers(), "Content-Type": "application/octet-stream"}
        with model.open("rb") as fh:  # Content-Length: refused before the body is read
            err = error_of(requests.post(f"{small.url}/api/models/m/versions", data=fh, headers=headers,
                                         timeout=30), 413, "PAYLOAD_TOO_LARGE")
        assert "1 MiB" in err["message"]
        chunked = requests.post(f"{small.url}/api/models/m/versions", data=file_chunks(model, 1 << 16),
                                headers=headers, timeout=30)
        error_of(chunked, 413, "PAYLOAD_TOO_LARGE")
        sla = {"sla_version": "v2.0", "customerID": "Admin", "applications": [{
            "applicationID": "", "application_name": "a", "application_namespace": "n",
            "application_desc": "x" * (5 << 20), "microservices": []}]}
        err = error_of(requests.post(f"{small.url}/api/apply", json=sla, headers=small.headers(), timeout=30),
                       413, "PAYLOAD_TOO_LARGE")
        assert err["details"][0]["limit_bytes"] == 1 << 20
        text = requests.post(f"{small.url}/api/apply", data=json.dumps(sla)[:1000], timeout=30,
                             headers={**small.headers(), "Content-Type": "text/plain"})
        error_of(text, 415, "UNSUPPORTED_MEDIA_TYPE")
        models = requests.get(f"{small.url}/api/models/", headers=small.headers(), timeout=30).json()
        assert (models if isinstance(models, list) else models["models"]) == []


def _raw(url: str, request: bytes, send_after: bytes = b"") -> bytes:
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(request)
        if send_after:
            sock.sendall(send_after)
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while piece := sock.recv(65536):
            chunks.append(piece)
    return b"".join(chunks)


@pytest.mark.parametrize("framing", [
    b"Content-Length: abc\r\n\r\n{}",
    b"Content-Length: -5\r\n\r\n{}",
    b"Content-Length: 100\r\n\r\n{\"a\": 1}",  # the body ends early (client closes)
    b"Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",  # a bad chunk size
    b"Content-Length: 99999999999999999999\r\n\r\n{}",
])
def test_broken_framing_is_never_a_server_error(root: RootProcess, framing: bytes) -> None:
    token = root.headers().get("Authorization", "")
    head = (b"POST /api/apply HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + (f"Authorization: {token}\r\n".encode() if token else b"") + framing)
    answer = _raw(root.url, head)
    status = int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/") else None
    assert status is None or status < 500, answer[:300]
    assert requests.get(f"{root.url}/api/health", timeout=10).status_code == 200
