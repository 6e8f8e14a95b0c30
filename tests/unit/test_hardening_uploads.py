"""Model uploads and artifact PUTs at the root: streamed to disk, limited, repaired.

- The body is copied to a temp file in chunks while hashing: a 64 MB upload allocates a few MB
  of Python memory, not 64 MB (tracemalloc), and the ONNX signature is read from the file's
  header without loading the weights (:func:`root_orchestrator.uploads.load_onnx_header`, which
  must agree with a whole-model parse on every input).
- Over the model limit (``max_upload_mb`` / ``TREELINE_MAX_MODEL_MB``) is 413 naming the limit,
  from the Content-Length before the body is read, and while reading a chunked body.
- A damaged stored artifact answers 409 CORRUPT_ARTIFACT and a re-upload repairs it.
"""

from __future__ import annotations

import hashlib
import io
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import onnx
import pytest
from flask import Flask, Response
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper
from werkzeug.test import EnvironBuilder, run_wsgi_app

from benchmarks.hardening import write_big_onnx
from model_zoo.tiny import tiny_dag_bytes
from root_orchestrator.api.context import ctx
from root_orchestrator.app import create_app
from root_orchestrator.auth import SecurityConfig
from root_orchestrator.auth.passwords import hash_password
from root_orchestrator.auth.tokens import ACCESS
from root_orchestrator.cluster_client import HttpClusterClient
from root_orchestrator.onnx_signature import extract_signature, load_onnx
from root_orchestrator.stores import Stores, open_stores
from root_orchestrator.uploads import MODEL_LIMIT_ENV, load_onnx_header, model_limit_mb
from treeline_common.clock import FakeClock
from treeline_common.errors import InvalidInput

SECRET = "hardening-uploads-signing-key-0123456789"
_PASSWORD_HASH: list[str] = []


def admin(app: Flask) -> FlaskClient:
    """A client sending an admin's bearer token (issued directly: no slow password login)."""
    if not _PASSWORD_HASH:
        _PASSWORD_HASH.append(hash_password("hardening-password"))
    with app.app_context():
        users = ctx().stores.users
        user = users.find_user("hardening-admin") or users.create_user(
            "hardening-admin", _PASSWORD_HASH[0], ["admin"], 0.0)
    client = app.test_client()
    token = app.extensions["treeline_auth"].tokens.issue(user, ACCESS)
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {token}"
    return client


@pytest.fixture
def stores(mongo_url: str) -> Iterator[Stores]:
    opened = open_stores(mongo_url)
    yield opened
    opened.close()


def make_app(stores: Stores, **kwargs: Any) -> Flask:
    return create_app(stores, FakeClock(), HttpClusterClient(timeout=0.1),
                      security=SecurityConfig(jwt_secret=SECRET), **kwargs)


def error_of(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, (response.status_code, response.get_data()[:300])
    body = response.get_json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "details"}
    assert body["error"]["code"] == code
    return dict(body["error"])


def chunked(client: FlaskClient, method: str, path: str, stream: Any,
            content_length: int | None = None) -> Response:
    """``stream`` sent as werkzeug's server passes it on: without a Content-Length (chunked), or
    with ``content_length``."""
    environ = EnvironBuilder(path=path, method=method, content_type="application/octet-stream",
                             environ_base=dict(client.environ_base)).get_environ()
    environ.pop("CONTENT_LENGTH", None)
    environ["wsgi.input"] = stream
    if content_length is None:
        environ["wsgi.input_terminated"] = True
    else:
        environ["CONTENT_LENGTH"] = str(content_length)
    app_iter, status, headers = run_wsgi_app(client.application, environ, buffered=True)
    return Response(b"".join(app_iter), status=status, headers=headers)


class Counting(io.RawIOBase):
    """A body that counts how much of it the server read."""

    def __init__(self, size: int) -> None:
        self.left = size
        self.read_bytes = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = min(len(buffer), self.left, 1 << 16)
        buffer[:n] = b"\0" * n
        self.left -= n
        self.read_bytes += n
        return n


def staged_files(stores: Stores) -> list[Path]:
    staging = stores.artifacts.staging_dir
    return sorted(staging.iterdir()) if staging is not None and staging.exists() else []


def listed_models(client: FlaskClient) -> list[Any]:
    body = client.get("/api/models/").get_json()
    return list(body if isinstance(body, list) else body["models"])


# -- limits ---------------------------------------------------------------------------------------

def test_a_model_over_the_limit_is_413_before_its_body_is_read(stores: Stores) -> None:
    app = make_app(stores, max_upload_mb=1)
    http = admin(app)
    body = Counting(3 << 20)
    err = error_of(chunked(http, "POST", "/api/models/big/versions", body, 3 << 20), 413, "PAYLOAD_TOO_LARGE")
    assert "1 MiB (1048576 bytes)" in err["message"] and err["details"][0]["limit_bytes"] == 1 << 20
    assert body.read_bytes == 0  # refused from the Content-Length
    assert listed_models(http) == [] and staged_files(stores) == []


def test_a_chunked_model_over_the_limit_is_413_while_streaming(stores: Stores) -> None:
    app = make_app(stores, max_upload_mb=1)
    http = admin(app)
    body = Counting(8 << 20)
    err = error_of(chunked(http, "POST", "/api/models/big/versions", body), 413, "PAYLOAD_TOO_LARGE")
    assert err["details"][0]["limit_bytes"] == 1 << 20
    assert body.read_bytes <= (1 << 20) + (1 << 16)  # stopped at the limit, not at the end
    assert listed_models(http) == [] and staged_files(stores) == []
    sha = hashlib.sha256(b"x").hexdigest()
    error_of(chunked(http, "PUT", f"/api/artifacts/{sha}", Counting(2 << 20)), 413, "PAYLOAD_TOO_LARGE")


def test_the_model_limit_comes_from_the_environment(stores: Stores, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(MODEL_LIMIT_ENV, "2")
    http = admin(make_app(stores))
    model = tmp_path / "m.onnx"
    write_big_onnx(model, 3 << 20)
    with model.open("rb") as fh:
        answer = http.post("/api/models/big/versions", input_stream=fh,
                           content_type="application/octet-stream")
        err = error_of(answer, 413, "PAYLOAD_TOO_LARGE")
    assert "2 MiB" in err["message"]
    assert model_limit_mb({}) == 2048 and model_limit_mb({MODEL_LIMIT_ENV: "10"}) == 10
    for bad in ("0", "-3", "lots"):
        with pytest.raises(InvalidInput) as caught:
            model_limit_mb({MODEL_LIMIT_ENV: bad})
        assert caught.value.details[0]["path"] == MODEL_LIMIT_ENV


def test_a_multipart_upload_is_415_naming_octet_stream(stores: Stores) -> None:
    http = admin(make_app(stores))
    answer = http.post("/api/models/tiny/versions", data={"file": (io.BytesIO(tiny_dag_bytes(0)), "m.onnx")},
                       content_type="multipart/form-data")
    err = error_of(answer, 415, "UNSUPPORTED_MEDIA_TYPE")
    assert err["details"][0]["accepted"] == ["application/octet-stream"]


# -- streaming --------------------------------------------------------------------------------------

def test_an_upload_is_streamed_not_buffered(tmp_path: Path, mongo_url: str) -> None:
    stores = open_stores(mongo_url)
    http = admin(make_app(stores))
    model = tmp_path / "big.onnx"
    size = write_big_onnx(model, 64 << 20)
    tracemalloc.start()
    try:
        with model.open("rb") as fh:  # input_stream: the test client would read data= whole
            answer = http.post("/api/models/big/versions", input_stream=fh,
                               content_type="application/octet-stream")
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert answer.status_code == 201, answer.get_json()
    doc = answer.get_json()
    assert doc["size"] == size and doc["signature"]["inputs"][0]["name"] == "x"
    assert peak < 12 << 20, f"{peak / (1 << 20):.1f} MiB allocated for a {size >> 20} MiB upload"
    assert staged_files(stores) == []  # the spooled file was moved into place
    digest = hashlib.sha256()
    with model.open("rb") as fh:
        for piece in iter(lambda: fh.read(1 << 20), b""):
            digest.update(piece)
    assert doc["sha256"] == digest.hexdigest()
    stores.close()


def test_an_artifact_put_streams_and_checks_its_digest(stores: Stores) -> None:
    http = admin(make_app(stores))
    data = bytes(range(256)) * 4096
    sha = hashlib.sha256(data).hexdigest()
    assert chunked(http, "PUT", f"/api/artifacts/{sha}", io.BytesIO(data)).status_code == 201
    assert http.get(f"/api/artifacts/{sha}").data == data
    wrong = hashlib.sha256(b"other").hexdigest()
    error_of(http.put(f"/api/artifacts/{wrong}", data=data), 422, "INTEGRITY_ERROR")
    assert staged_files(stores) == []


# -- damaged artifacts over HTTP ----------------------------------------------------------------------

def _corrupt(stores: Stores, sha256: str) -> None:
    from tests.unit.test_hardening_artifacts import corrupt

    corrupt(stores.artifacts, sha256, offset=10)


def test_a_corrupt_artifact_is_409_until_reuploaded(stores: Stores) -> None:
    http = admin(make_app(stores))
    data = tiny_dag_bytes(1)
    sha = http.post("/api/models/tiny/versions", data=data).get_json()["sha256"]
    _corrupt(stores, sha)
    for path in (f"/api/artifacts/{sha}", "/api/models/tiny/versions/1/artifact"):
        err = error_of(http.get(path), 409, "CORRUPT_ARTIFACT")
        assert err["details"][0]["path"] == "sha256" and "re" in err["message"]
    again = http.put(f"/api/artifacts/{sha}", data=data)
    assert again.status_code == 201  # repaired, not "already stored"
    assert http.get(f"/api/artifacts/{sha}").data == data
    assert http.get("/api/models/tiny/versions/1/artifact").data == data
    assert http.put(f"/api/artifacts/{sha}", data=data).status_code == 200


def test_registering_the_same_model_again_repairs_its_artifact(stores: Stores) -> None:
    http = admin(make_app(stores))
    data = tiny_dag_bytes(2)
    sha = http.post("/api/models/tiny/versions", data=data).get_json()["sha256"]
    _corrupt(stores, sha)
    assert http.post("/api/models/tiny/versions", data=data).status_code == 201
    assert http.get("/api/models/tiny/versions/1/artifact").data == data


# -- the ONNX header ----------------------------------------------------------------------------------

def _models() -> dict[str, bytes]:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])
    w = helper.make_tensor("w", TensorProto.FLOAT, [4], [1.0, 2.0, 3.0, 4.0])
    w_input = helper.make_tensor_value_info("w", TensorProto.FLOAT, [4])  # old exporters list weights
    old_style = helper.make_model(
        helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "old", [x, w_input], [y],
                          initializer=[w]), opset_imports=[helper.make_opsetid("", 17)])
    sparse = helper.make_sparse_tensor(helper.make_tensor("s", TensorProto.FLOAT, [1], [5.0]),
                                       helper.make_tensor("si", TensorProto.INT64, [1], [2]), [4])
    with_sparse = onnx.ModelProto()
    with_sparse.CopyFrom(old_style)
    with_sparse.graph.sparse_initializer.append(sparse)
    with_sparse.graph.input.append(helper.make_tensor_value_info("s", TensorProto.FLOAT, [4]))
    value = helper.make_tensor("cv", TensorProto.FLOAT, [4], [1] * 4)
    constant = helper.make_model(helper.make_graph(
        [helper.make_node("Constant", [], ["c"], value=value), helper.make_node("Add", ["x", "c"], ["y"])],
        "const", [x], [y]),
        opset_imports=[helper.make_opsetid("", 17)])
    return {"tiny_dag": tiny_dag_bytes(3), "old_style": old_style.SerializeToString(),
            "sparse": with_sparse.SerializeToString(), "constant": constant.SerializeToString()}


@pytest.mark.parametrize("name", sorted(_models()))
def test_the_header_gives_the_whole_models_signature(name: str, tmp_path: Path) -> None:
    data = _models()[name]
    path = tmp_path / "m.onnx"
    path.write_bytes(data)
    assert extract_signature(load_onnx_header(path)) == extract_signature(load_onnx(data))


def test_the_header_of_a_big_model_skips_its_weights(tmp_path: Path) -> None:
    path = tmp_path / "big.onnx"
    write_big_onnx(path, 32 << 20)
    tracemalloc.start()
    try:
        header = load_onnx_header(path)
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2 << 20
    inputs = extract_signature(header)["inputs"]
    assert inputs == [{"name": "x", "dtype": "float32", "shape": [(32 << 20) // 4]}]
    assert [t.name for t in header.graph.initializer] == ["w"] and not header.graph.initializer[0].raw_data


def test_the_header_refuses_external_data_and_garbage(tmp_path: Path) -> None:
    model = onnx.load_model_from_string(_models()["old_style"])
    init = model.graph.initializer[0]
    init.data_location = TensorProto.EXTERNAL
    init.ClearField("float_data")
    init.external_data.add(key="location", value="weights.bin")
    path = tmp_path / "m.onnx"
    path.write_bytes(model.SerializeToString())
    with pytest.raises(InvalidInput, match="valid ONNX") as caught:
        load_onnx_header(path)
    assert "external data" in caught.value.details[0]["message"]
    for garbage in (b"", b"definitely not onnx \x00\xff\x13", b"\x08\x07", b"\x3a\xff\xff\xff\xff\x0f"):
        path.write_bytes(garbage)
        with pytest.raises(InvalidInput) as caught:
            load_onnx_header(path)
        assert caught.value.details[0]["path"] == "body"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(base=st.sampled_from(sorted(_models())), edits=st.lists(
    st.tuples(st.integers(min_value=0, max_value=10_000), st.integers(min_value=0, max_value=255)),
    max_size=4), cut=st.one_of(st.none(), st.integers(min_value=0, max_value=10_000)))
def test_the_header_accepts_exactly_what_a_whole_parse_accepts(tmp_path: Path, base: str,
                                                               edits: list[tuple[int, int]],
                                                               cut: int | None) -> None:
    data = bytearray(_models()[base])
    for offset, value in edits:
        data[offset % len(data)] = value
    if cut is not None:
        del data[cut % (len(data) + 1):]
    path = tmp_path / "fuzz.onnx"
    path.write_bytes(bytes(data))
    try:
        whole: Any = extract_signature(load_onnx(bytes(data)))
    except InvalidInput:
        whole = InvalidInput
    try:
        header: Any = extract_signature(load_onnx_header(path))
    except InvalidInput:
        header = InvalidInput
    assert header == whole
