"""Bad input at every JSON edge of the root and the cluster: never a 500, always the error shape.

Each JSON route gets the same malformed bodies: any nesting depth, ``null``, ``NaN``, bad UTF-8,
no or a wrong content type, a body over the 1 MiB limit (by Content-Length and chunked). The
answer is 400/413/415 with ``{"error": {code, message, details}}`` naming what is wrong.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask, Response
from flask.testing import FlaskClient
from werkzeug.test import EnvironBuilder, run_wsgi_app

from cluster_orchestrator.api import create_app as create_cluster_app
from cluster_orchestrator.orchestrator import ClusterConfig, ClusterOrchestrator
from cluster_orchestrator.root_client import RootClient
from cluster_orchestrator.store import InMemoryClusterStateStore
from model_zoo.tiny import tiny_dag_bytes
from root_orchestrator.api.context import ctx
from root_orchestrator.app import create_app
from root_orchestrator.auth import SecurityConfig
from root_orchestrator.auth.passwords import hash_password
from root_orchestrator.auth.tokens import ACCESS
from root_orchestrator.cluster_client import HttpClusterClient
from root_orchestrator.stores import open_stores
from treeline_common.clock import FakeClock
from treeline_common.errors import (
    CorruptArtifact,
    PayloadTooLarge,
    TreelineError,
    UnsupportedMediaType,
    from_body,
    http_status,
)
from treeline_common.http import JSON_BODY_LIMIT, MAX_JSON_DEPTH, parse_json_bytes
from treeline_common.mongo_server import MongoServerProcess

ROOT_JSON_ROUTES = [
    ("POST", "/api/application/"), ("POST", "/api/apply"), ("POST", "/api/plan"),
    ("POST", "/api/clusters/register"), ("POST", "/api/information/0123456789abcdef01234567"),
    ("PUT", "/api/models/tiny/aliases/prod"), ("PUT", "/api/models/tiny/versions/1/profiles/server"),
]
CLUSTER_JSON_ROUTES = [
    ("POST", "/api/node/register"), ("POST", "/api/service/s1/0"), ("POST", "/api/plan"),
    ("POST", "/api/models/profile"),
]
DEEP_ARRAY = b"[" * 1000 + b"]" * 1000
DEEP_OBJECT = b'{"a":' * 100_000 + b"1" + b"}" * 100_000


class _Bus:
    def publish(self, topic: str, message: Any) -> None:
        pass


@pytest.fixture(scope="module")
def root_app(mongo_server: MongoServerProcess) -> Iterator[Flask]:
    stores = open_stores(mongo_server.db_url("hardening_http"))
    app = create_app(stores, FakeClock(), HttpClusterClient(timeout=0.1),
                     security=SecurityConfig(jwt_secret="hardening-test-signing-key-0123456789"))
    # a model, so the alias and profile routes get as far as their bodies
    assert admin(app).post("/api/models/tiny/versions", data=tiny_dag_bytes(0)).status_code == 201
    yield app
    stores.close()


def admin(app: Flask) -> FlaskClient:
    """A client sending an admin's bearer token (issued directly: no slow password login)."""
    service = app.extensions["treeline_auth"]
    user = _ADMINS.get(id(app))
    if user is None:
        with app.app_context():
            store = ctx().stores.users
            user = store.find_user("hardening-admin") or store.create_user(
                "hardening-admin", hash_password("hardening-password"), ["admin"], 0.0)
        _ADMINS[id(app)] = user
    client = app.test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {service.tokens.issue(user, ACCESS)}"
    return client


_ADMINS: dict[int, dict[str, Any]] = {}


@pytest.fixture(scope="module")
def cluster_app() -> Flask:
    config = ClusterConfig(name="c1", root_url="http://127.0.0.1:9", public_url="http://127.0.0.1:10100",
                           mqtt_host="127.0.0.1", mqtt_port=1883)
    store = InMemoryClusterStateStore()
    store.set_setting("cluster_id", "cid-1")
    return create_cluster_app(ClusterOrchestrator(config, store, RootClient(config.root_url), _Bus(),
                                                  FakeClock()))


def _all_routes() -> list[tuple[str, str, str]]:
    return [("root", m, p) for m, p in ROOT_JSON_ROUTES] + [("cluster", m, p) for m, p in CLUSTER_JSON_ROUTES]


@pytest.fixture()
def apps(root_app: Flask, cluster_app: Flask) -> dict[str, FlaskClient]:
    return {"root": admin(root_app), "cluster": cluster_app.test_client()}


def error_of(response: Any, status: int, code: str) -> dict[str, Any]:
    """The error body, checked for its shape: ``{"error": {code, message, details: [{path,...}]}}``."""
    assert response.status_code == status, (response.status_code, response.get_data()[:300])
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "details"}
    err = body["error"]
    assert err["code"] == code and isinstance(err["message"], str) and err["message"]
    assert isinstance(err["details"], list)
    for detail in err["details"]:
        assert isinstance(detail, dict) and isinstance(detail.get("path"), str) and "message" in detail
    return err


BAD_JSON = [
    pytest.param(DEEP_ARRAY, "nested too deeply", id="deep-array-1000"),
    pytest.param(DEEP_OBJECT, "nested too deeply", id="deep-object-100000"),
    pytest.param(b"[" * 100 + b"]" * 100, "nested too deeply", id="deep-100-parses"),
    pytest.param(b"null", "got null", id="null"),
    pytest.param(b"[]", "got an array", id="array"),
    pytest.param(b'"text"', "got a string", id="string"),
    pytest.param(b"42", "got a number", id="number"),
    pytest.param(b'{"x": NaN}', "NaN", id="nan"),
    pytest.param(b'{"x": -Infinity}', "Infinity", id="infinity"),
    pytest.param(b'{"x": 1e999}', "out of range", id="overflow"),
    pytest.param(b'{"x": ' + b"9" * 5000 + b"}", "digits", id="huge-int"),
    pytest.param(b'{"version": 41839785431717905491698909184}', "64 bits", id="int-over-64-bits"),
    pytest.param(b'{"x": [-9223372036854775809]}', "64 bits", id="int-under-64-bits"),
    pytest.param(b'{"x": "\xff\xfe"}', "UTF-8", id="bad-utf8"),
    pytest.param(b'{"x": "\\ud800"}', "surrogate", id="lone-surrogate"),
    pytest.param(b'{"$where": 1}', "keys", id="dollar-key"),
    pytest.param(b'{"a\\u0000b": 1}', "keys", id="nul-key"),
    pytest.param(b"{nope", "line 1 column 2", id="syntax"),
    pytest.param(b"", "empty", id="empty"),
]


@pytest.mark.parametrize("body, says", BAD_JSON)
@pytest.mark.parametrize("side, method, path", _all_routes())
def test_malformed_json_is_400_naming_the_fault(apps: dict[str, FlaskClient], side: str, method: str,
                                                path: str, body: bytes, says: str) -> None:
    answer = apps[side].open(path, method=method, data=body, content_type="application/json")
    err = error_of(answer, 400, "INVALID_INPUT")
    text = err["message"] + " " + " ".join(str(d["message"]) for d in err["details"])
    assert says in text


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded",
                                          "application/xml", "application/json; charset=latin-1"])
@pytest.mark.parametrize("side, method, path", _all_routes())
def test_a_body_without_the_json_content_type_is_415_naming_it(apps: dict[str, FlaskClient], side: str,
                                                               method: str, path: str,
                                                               content_type: str | None) -> None:
    valid = json.dumps({"sla_version": "v2.0", "customerID": "Admin", "applications": []}).encode()
    answer = apps[side].open(path, method=method, data=valid, content_type=content_type)
    err = error_of(answer, 415, "UNSUPPORTED_MEDIA_TYPE")
    assert "application/json" in err["message"] or "utf-8" in err["message"].lower()
    assert err["details"][0]["path"] == "Content-Type" and err["details"][0]["accepted"]


@pytest.mark.parametrize("side, method, path", _all_routes())
def test_a_body_over_one_mib_is_413_naming_the_limit(apps: dict[str, FlaskClient], side: str, method: str,
                                                     path: str) -> None:
    if path.startswith(("/api/information/", "/api/models/tiny/versions/1/profiles")):
        pytest.skip("a cluster push and a profile take more than 1 MiB (see below)")
    big = b'{"description": "' + b"x" * (5 << 20) + b'"}'
    err = error_of(apps[side].open(path, method=method, data=big, content_type="application/json"), 413,
                   "PAYLOAD_TOO_LARGE")
    assert "1 MiB" in err["message"] and err["details"][0]["limit_bytes"] == JSON_BODY_LIMIT
    # no Content-Length (chunked): refused while reading, after the limit, not after the whole body
    stream = _CountingStream(big)
    error_of(chunked(apps[side], method, path, stream), 413, "PAYLOAD_TOO_LARGE")
    assert stream.read_bytes <= JSON_BODY_LIMIT + (1 << 16) + 1


def test_the_push_and_profile_routes_take_bigger_bodies_but_not_unbounded(root_app: Flask) -> None:
    http = admin(root_app)
    two_mib = b'{"aggregate": {"pad": "' + b"x" * (2 << 20) + b'"}, "jobs": []}'
    answer = http.post("/api/information/0123456789abcdef01234567", data=two_mib,
                       content_type="application/json")
    assert answer.status_code == 404  # past the size check: the cluster is unknown
    huge = b'{"aggregate": {"pad": "' + b"x" * (20 << 20) + b'"}}'
    err = error_of(http.post("/api/information/0123456789abcdef01234567", data=huge,
                             content_type="application/json"), 413, "PAYLOAD_TOO_LARGE")
    assert "16 MiB" in err["message"]


def test_an_sla_with_a_5_mib_description_is_refused(root_app: Flask) -> None:
    sla = {"sla_version": "v2.0", "customerID": "Admin", "applications": [{
        "applicationID": "", "application_name": "a", "application_namespace": "n",
        "application_desc": "x" * (5 << 20), "microservices": []}]}
    http = admin(root_app)
    for path in ("/api/application/", "/api/apply", "/api/plan"):
        error_of(http.post(path, json=sla), 413, "PAYLOAD_TOO_LARGE")
    listed = http.get("/api/applications/").get_json()
    assert (listed if isinstance(listed, list) else listed["applications"]) == []


def test_deep_nesting_inside_a_valid_looking_sla_is_400_with_its_path(root_app: Flask) -> None:
    deep: Any = 1
    for _ in range(MAX_JSON_DEPTH + 5):
        deep = [deep]
    sla = {"sla_version": "v2.0", "customerID": "Admin", "applications": [{"microservices": [deep]}]}
    err = error_of(admin(root_app).post("/api/apply", json=sla), 400, "INVALID_INPUT")
    assert err["details"][0]["path"].startswith("applications[0].microservices[0][0][0]")


def test_an_empty_body_without_content_type_is_400_not_415(apps: dict[str, FlaskClient]) -> None:
    error_of(apps["root"].post("/api/apply"), 400, "INVALID_INPUT")
    error_of(apps["cluster"].post("/api/plan"), 400, "INVALID_INPUT")


def test_json_with_a_suffix_type_and_utf8_bom_is_accepted(root_app: Flask) -> None:
    http = admin(root_app)
    body = b"\xef\xbb\xbf" + json.dumps({"cluster_name": "c-bom", "cluster_location": "lab",
                                         "url": "http://127.0.0.1:1"}).encode()
    answer = http.post("/api/clusters/register", data=body, content_type="application/vnd.treeline+json")
    assert answer.status_code in (200, 201), answer.get_json()


def test_unknown_routes_and_methods_keep_the_error_shape(apps: dict[str, FlaskClient]) -> None:
    error_of(apps["root"].get("/api/nope"), 404, "NOT_FOUND")
    error_of(apps["root"].patch("/api/apply"), 405, "METHOD_NOT_ALLOWED")
    error_of(apps["cluster"].get("/api/nope"), 404, "NOT_FOUND")


def test_recursion_error_anywhere_is_a_400_not_a_500() -> None:
    from treeline_common.http import install_error_handlers

    app = Flask("t")
    install_error_handlers(app)

    @app.get("/deep")
    def deep() -> Any:
        def down(n: int) -> int:
            return down(n + 1) + 1
        return str(down(0))

    error_of(app.test_client().get("/deep"), 400, "INVALID_INPUT")


def test_new_errors_map_to_their_statuses_and_round_trip() -> None:
    for cls, status in ((PayloadTooLarge, 413), (UnsupportedMediaType, 415)):
        err = cls("m", [{"path": "body", "message": "x"}])
        assert http_status(err) == status
        back = from_body(err.to_body())
        assert type(back) is cls and back.details == err.details
    assert type(from_body({"error": {"code": "CORRUPT_ARTIFACT", "message": "m"}})) is CorruptArtifact
    assert isinstance(from_body({"error": {"code": "?", "message": "m"}}), TreelineError)


def test_parse_json_bytes_takes_what_stores_can_hold() -> None:
    assert parse_json_bytes(b'{"a": [1, 2.5, "\\u00e9", null, true]}') == {"a": [1, 2.5, "é", None, True]}
    assert parse_json_bytes(json.dumps([[[1]]]).encode()) == [[[1]]]


def chunked(client: FlaskClient, method: str, path: str, stream: Any,
            content_type: str = "application/json") -> Any:
    """Send ``stream`` without a Content-Length, as a chunked request arrives from werkzeug's server."""
    environ = EnvironBuilder(path=path, method=method, content_type=content_type,
                             environ_base=dict(client.environ_base)).get_environ()
    environ.pop("CONTENT_LENGTH", None)
    environ["wsgi.input"] = stream
    environ["wsgi.input_terminated"] = True
    environ["HTTP_TRANSFER_ENCODING"] = "chunked"
    app_iter, status, headers = run_wsgi_app(client.application, environ, buffered=True)
    return Response(b"".join(app_iter), status=status, headers=headers)


class _CountingStream(io.RawIOBase):
    """A request body read in pieces; counts how much the server pulled."""

    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)
        self.read_bytes = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        chunk = self._data.read(min(len(buffer), 1 << 16))
        buffer[:len(chunk)] = chunk
        self.read_bytes += len(chunk)
        return len(chunk)


def test_counting_stream_helper(tmp_path: Path) -> None:
    stream = _CountingStream(b"abc")
    assert stream.read() == b"abc" and stream.read_bytes == 3
