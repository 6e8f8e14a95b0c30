"""One contract suite for the root's stores, run on every backend.

``embedded`` (the nx-27017 MongoDB wire-protocol server ``treeline up`` starts, one per session,
a fresh database per test) always runs; a real MongoDB runs when TREELINE_MONGO_URL is set (each
test gets a fresh database, dropped afterwards). MongoDB is the one store (SQLite is retired).
"""

from __future__ import annotations

import hashlib
import io
import os
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pymongo
import pytest

from root_orchestrator.stores import Stores, known_schemes, open_stores
from treeline_common.errors import Conflict, IntegrityError, InvalidInput, NotFound

SIG = {"inputs": [{"name": "x", "dtype": "float32", "shape": [1, "N"]}], "outputs": []}


def _mongodb_url() -> str | None:
    return os.environ.get("TREELINE_MONGO_URL")


@pytest.fixture(params=["embedded", "mongodb"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The URL of a fresh, empty store of the backend the test is parametrized with."""
    if request.param == "embedded":
        yield request.getfixturevalue("mongo_url")
    else:
        base = _mongodb_url()
        if not base:
            pytest.skip("TREELINE_MONGO_URL not set")
        url = base.rstrip("/") + f"/treeline_test_{uuid.uuid4().hex[:8]}"
        yield url
        client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(url)
        client.drop_database(url.rsplit("/", 1)[1])
        client.close()


@pytest.fixture
def opener(store_url: str) -> Iterator[Callable[[], Stores]]:
    """A function that (re)opens the same backend, so persistence can be checked by re-opening."""
    opened: list[Stores] = []

    def _open() -> Stores:
        stores = open_stores(store_url)
        opened.append(stores)
        return stores

    yield _open
    for stores in opened:
        stores.close()


@pytest.fixture
def stores(opener: Callable[[], Stores]) -> Stores:
    return opener()


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- artifacts -----------------------------------------------------------------------------------------

def test_artifact_round_trip_bytes_and_stream(stores: Stores) -> None:
    data = os.urandom(200_000)
    result = stores.artifacts.put(data)
    assert (result.sha256, result.size, result.created) == (_sha(data), len(data), True)
    assert stores.artifacts.exists(result.sha256)
    assert stores.artifacts.size(result.sha256) == len(data)
    assert stores.artifacts.get(result.sha256) == data
    assert b"".join(stores.artifacts.iter_bytes(result.sha256)) == data
    streamed = stores.artifacts.put(io.BytesIO(b"streamed bytes"))
    assert stores.artifacts.get(streamed.sha256) == b"streamed bytes"


def test_artifact_put_is_idempotent(stores: Stores) -> None:
    first = stores.artifacts.put(b"same")
    second = stores.artifacts.put(b"same", expected_sha256=_sha(b"same"))
    assert first.created and not second.created
    assert second.sha256 == first.sha256
    assert stores.artifacts.get(first.sha256) == b"same"


def test_artifact_sha_mismatch_stores_nothing(stores: Stores) -> None:
    wrong = _sha(b"other")
    with pytest.raises(IntegrityError):
        stores.artifacts.put(b"payload", expected_sha256=wrong)
    assert not stores.artifacts.exists(wrong)
    assert not stores.artifacts.exists(_sha(b"payload"))


def test_artifact_missing_and_delete(stores: Stores) -> None:
    missing = _sha(b"missing")
    assert not stores.artifacts.exists(missing)
    with pytest.raises(NotFound):
        stores.artifacts.open(missing)
    with pytest.raises(NotFound):
        stores.artifacts.size(missing)
    sha = stores.artifacts.put(b"gone soon").sha256
    assert stores.artifacts.delete(sha) is True
    assert stores.artifacts.delete(sha) is False
    assert not stores.artifacts.exists(sha)


def test_artifact_rejects_malformed_digest(stores: Stores) -> None:
    with pytest.raises(InvalidInput):
        stores.artifacts.exists("../../etc/passwd")


# -- model registry ------------------------------------------------------------------------------------

def test_versions_are_monotonic_per_model(stores: Stores) -> None:
    reg = stores.models
    versions = [reg.create_version("m", _sha(bytes([i])), i, SIG, created_at=float(i))["version"]
                for i in range(3)]
    other = reg.create_version("other", _sha(b"o"), 1, SIG)
    assert versions == [1, 2, 3]
    assert other["version"] == 1
    doc = reg.get_version("m", 2)
    assert doc["sha256"] == _sha(bytes([1])) and doc["signature"] == SIG and doc["format"] == "onnx"
    assert reg.get_version("m", "2")["version"] == 2
    assert reg.get_version("m", "latest")["version"] == 3
    assert [v["version"] for v in reg.list_versions("m")] == [1, 2, 3]


def test_concurrent_creates_never_reuse_a_version(stores: Stores) -> None:
    got: list[int] = []
    lock = threading.Lock()

    def worker(i: int) -> None:
        v = stores.models.create_version("race", _sha(str(i).encode()), 1, SIG)["version"]
        with lock:
            got.append(v)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got) == list(range(1, 9))
    assert stores.models.get_version("race", "latest")["version"] == 8


def test_aliases_resolve_and_move(stores: Stores) -> None:
    reg = stores.models
    for i in range(2):
        reg.create_version("m", _sha(bytes([i])), 1, SIG)
    assert reg.set_alias("m", "champion", 1)["aliases"] == ["champion"]
    assert reg.get_version("m", "champion")["version"] == 1
    assert reg.get_version("m", 1)["aliases"] == ["champion"]
    reg.set_alias("m", "champion", 2)
    assert reg.get_version("m", "champion")["version"] == 2
    assert reg.get_version("m", 1)["aliases"] == []
    assert reg.list_models() == [{"name": "m", "latest_version": 2, "last_version": 2, "aliases": {"champion": 2},
                                  "owner": ""}]


def test_model_owner_is_set_once_and_checked(stores: Stores) -> None:
    reg = stores.models
    first = reg.create_version("m", _sha(b"1"), 1, SIG, owner="alice")
    assert first["owner"] == "alice"
    assert reg.create_version("m", _sha(b"2"), 1, SIG, owner="alice")["version"] == 2
    with pytest.raises(Conflict) as taken:
        reg.create_version("m", _sha(b"3"), 1, SIG, owner="bob")
    assert taken.value.details[0]["path"] == "model.name" and "alice" not in taken.value.message
    assert reg.get_version("m", "latest")["version"] == 2  # the refused create stored nothing
    assert reg.create_version("m", _sha(b"4"), 1, SIG)["owner"] == "alice"  # owner=None: any model, kept
    assert {v["owner"] for v in reg.list_versions("m")} == {"alice"}
    assert reg.create_version("legacy", _sha(b"l"), 1, SIG)["owner"] == ""
    assert [(m["name"], m["owner"]) for m in reg.list_models()] == [("legacy", ""), ("m", "alice")]
    assert reg.set_alias("m", "prod", 1)["owner"] == "alice"
    assert {v["owner"] for v in reg.delete_model("m")} == {"alice"}
    assert reg.create_version("m", _sha(b"5"), 1, SIG, owner="bob")["owner"] == "bob"  # free again


def test_registry_errors_name_the_field(stores: Stores) -> None:
    reg = stores.models
    with pytest.raises(NotFound) as missing_model:
        reg.get_version("nope", "latest")
    assert missing_model.value.details[0]["path"] == "model.name"
    reg.create_version("m", _sha(b"x"), 1, SIG)
    for ref in (7, "no-such-alias"):
        with pytest.raises(NotFound) as missing_version:
            reg.get_version("m", ref)
        assert missing_version.value.details[0]["path"] == "model.version"
    with pytest.raises(NotFound):
        reg.set_alias("m", "prod", 9)
    for bad in ("latest", "3", "a.b", "$x"):
        with pytest.raises(InvalidInput):
            reg.set_alias("m", bad, 1)


# -- op-time profiles (on the model registry) ------------------------------------------------------------

def test_profiles_per_version_and_class_last_write_wins(stores: Stores) -> None:
    reg = stores.models
    for i in range(2):
        reg.create_version("m", _sha(bytes([i])), 1, SIG)
    assert reg.list_profiles("m", 1) == {}
    with pytest.raises(NotFound) as exc:
        reg.get_profile("m", 1, "server")
    assert exc.value.details[0]["path"] == "device_class"
    doc = {"op_ms": {"a.b": 1.5, "$c": 0.5}, "total_ms": 2.0, "device_class": "server"}
    assert reg.put_profile("m", 1, "server", doc) == doc
    reg.put_profile("m", 1, "rpi4", {**doc, "device_class": "rpi4"})
    reg.put_profile("m", 1, "server", {**doc, "total_ms": 3.0})
    assert reg.get_profile("m", 1, "server")["total_ms"] == 3.0
    assert reg.get_profile("m", 1, "server")["op_ms"] == {"a.b": 1.5, "$c": 0.5}
    assert sorted(reg.list_profiles("m", 1)) == ["rpi4", "server"]
    assert reg.list_profiles("m", 2) == {}
    with pytest.raises(NotFound):
        reg.put_profile("m", 3, "server", doc)
    with pytest.raises(NotFound):
        reg.list_profiles("nope", 1)


def test_delete_profiles_all_or_one_class(stores: Stores) -> None:
    reg = stores.models
    for i in range(2):
        reg.create_version("m", _sha(bytes([i])), 1, SIG)
    for device_class in ("server", "rpi4", "jetson"):
        reg.put_profile("m", 1, device_class, {"op_ms": {"x": 1.0}})
    reg.put_profile("m", 2, "server", {"op_ms": {"x": 2.0}})
    assert reg.delete_profiles("m", 1, "rpi4") == ["rpi4"]
    assert reg.delete_profiles("m", 1, "rpi4") == []  # idempotent
    assert sorted(reg.list_profiles("m", 1)) == ["jetson", "server"]
    assert reg.delete_profiles("m", 1) == ["jetson", "server"]
    assert reg.list_profiles("m", 1) == {}
    assert reg.get_profile("m", 2, "server")["op_ms"] == {"x": 2.0}  # other versions untouched
    with pytest.raises(NotFound):
        reg.delete_profiles("m", 9)
    with pytest.raises(NotFound):
        reg.delete_profiles("nope", 1, "server")


def test_delete_model_removes_versions_aliases_profiles(stores: Stores) -> None:
    reg = stores.models
    for i in range(2):
        reg.create_version("m", _sha(bytes([i])), 1, SIG)
    reg.create_version("keep", _sha(b"k"), 1, SIG)
    reg.set_alias("m", "prod", 2)
    reg.put_profile("m", 1, "server", {"op_ms": {}})
    deleted = reg.delete_model("m")
    assert [(v["name"], v["version"], v["sha256"]) for v in deleted] == [("m", 1, _sha(b"\x00")),
                                                                         ("m", 2, _sha(b"\x01"))]
    assert [m["name"] for m in reg.list_models()] == ["keep"]
    for call in (lambda: reg.get_version("m", "latest"), lambda: reg.list_versions("m"),
                 lambda: reg.delete_model("m"), lambda: reg.list_profiles("m", 1)):
        with pytest.raises(NotFound):
            call()
    again = reg.create_version("m", _sha(b"new"), 1, SIG)
    assert (again["version"], again["aliases"]) == (1, [])  # the name is free again, numbering restarts
    assert reg.list_profiles("m", 1) == {}
    assert reg.get_version("keep", 1)["sha256"] == _sha(b"k")


# -- users and cluster tokens --------------------------------------------------------------------------

def test_users_create_find_update_delete(stores: Stores) -> None:
    users = stores.users
    assert users.count_users() == 0 and users.list_users() == [] and users.find_user("alice") is None
    alice = users.create_user("alice", "hash-a", ["application_provider"], 1.0)
    bob = users.create_user("bob", "hash-b", ["admin"], 2.0)
    assert len(alice["user_id"]) == 24 and alice["user_id"] != bob["user_id"]
    assert alice == {"user_id": alice["user_id"], "username": "alice", "roles": ["application_provider"],
                     "password_hash": "hash-a", "created_at": 1.0}
    assert users.get_user(alice["user_id"]) == alice and users.find_user("alice") == alice
    assert users.find_user("Alice") is None  # exact names
    assert [u["username"] for u in users.list_users()] == ["alice", "bob"] and users.count_users() == 2
    with pytest.raises(Conflict) as taken:
        users.create_user("alice", "other", [], 3.0)
    assert taken.value.details[0]["path"] == "username"
    changed = users.update_user(alice["user_id"], {"password_hash": "new", "roles": ["admin"],
                                                   "username": "mallory", "user_id": "x"})
    assert (changed["username"], changed["user_id"], changed["password_hash"], changed["roles"]) == (
        "alice", alice["user_id"], "new", ["admin"])
    assert users.get_user(alice["user_id"]) == changed
    assert users.delete_user(alice["user_id"]) == changed
    for call in (lambda: users.get_user(alice["user_id"]), lambda: users.delete_user(alice["user_id"]),
                 lambda: users.update_user(alice["user_id"], {"roles": []})):
        with pytest.raises(NotFound) as missing:
            call()
        assert missing.value.details[0]["path"] == "user_id"
    assert users.find_user("alice") is None and users.count_users() == 1
    assert users.create_user("alice", "again", [], 4.0)["user_id"] != alice["user_id"]  # name free again


def test_concurrent_user_creates_keep_names_unique(stores: Stores) -> None:
    outcomes: list[str] = []
    lock = threading.Lock()

    def worker() -> None:
        try:
            stores.users.create_user("same", "h", [], 0.0)
            result = "created"
        except Conflict:
            result = "conflict"
        with lock:
            outcomes.append(result)

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["conflict"] * 5 + ["created"]
    assert stores.users.count_users() == 1


def test_cluster_tokens_store_only_digests(stores: Stores) -> None:
    users = stores.users
    doc = users.create_cluster_token("t1", _sha(b"secret"), "infra-user", "edge site", 5.0)
    assert doc == {"token_id": "t1", "secret_sha256": _sha(b"secret"), "owner": "infra-user",
                   "name": "edge site", "created_at": 5.0}
    users.create_cluster_token("t2", _sha(b"other"), "admin", "", 6.0)
    assert users.get_cluster_token("t1") == doc
    assert [t["token_id"] for t in users.list_cluster_tokens()] == ["t1", "t2"]
    with pytest.raises(Conflict):
        users.create_cluster_token("t1", _sha(b"x"), "a", "", 7.0)
    assert users.delete_cluster_token("t1") == doc
    with pytest.raises(NotFound) as missing:
        users.get_cluster_token("t1")
    assert missing.value.details[0]["path"] == "token_id"
    with pytest.raises(NotFound):
        users.delete_cluster_token("t1")
    assert [t["token_id"] for t in users.list_cluster_tokens()] == ["t2"]


# -- applications and services -------------------------------------------------------------------------

def _create_app(stores: Stores, user: str = "Admin") -> dict:
    services = [{"microservice_name": "a", "status": "REQUESTED", "instances": []},
                {"microservice_name": "b", "status": "REQUESTED", "instances": []}]
    return stores.applications.create_application({"application_name": "app", "applicationID": ""},
                                                  services, user)


def test_application_create_get_list_delete(stores: Stores) -> None:
    app = _create_app(stores)
    other = _create_app(stores, user="bob")
    apps = stores.applications
    assert len(app["applicationID"]) == 24 and len(app["microservices"]) == 2
    assert apps.get_application(app["applicationID"]) == app
    listed = [a["applicationID"] for a in apps.list_applications()]
    assert listed == [app["applicationID"], other["applicationID"]]
    assert [a["applicationID"] for a in apps.list_applications(user="bob")] == [other["applicationID"]]
    svc = apps.get_service(app["microservices"][0])
    assert (svc["microservice_name"], svc["application_id"], svc["revision"]) == (
        "a", app["applicationID"], 1)
    assert [s["service_id"] for s in apps.list_services(app["applicationID"])] == app["microservices"]
    deleted = apps.delete_application(app["applicationID"])
    assert sorted(s["service_id"] for s in deleted) == sorted(app["microservices"])
    with pytest.raises(NotFound):
        apps.get_application(app["applicationID"])
    with pytest.raises(NotFound):
        apps.get_service(app["microservices"][0])
    assert len(apps.list_services()) == 2  # the other application's


def test_service_update_with_revision_check(stores: Stores) -> None:
    sid = _create_app(stores)["microservices"][0]
    apps = stores.applications
    updated = apps.update_service(sid, {"status": "SCHEDULED", "cluster_id": "c1"}, expected_revision=1)
    assert (updated["status"], updated["cluster_id"], updated["revision"]) == ("SCHEDULED", "c1", 2)
    with pytest.raises(Conflict):
        apps.update_service(sid, {"status": "RUNNING"}, expected_revision=1)
    assert apps.get_service(sid)["status"] == "SCHEDULED"
    unconditional = apps.update_service(sid, {"status": "RUNNING", "service_id": "hijack"})
    assert (unconditional["status"], unconditional["service_id"], unconditional["revision"]) == (
        "RUNNING", sid, 3)
    with pytest.raises(NotFound):
        apps.update_service("0" * 24, {"status": "RUNNING"})


def test_find_applications_by_user_and_name(stores: Stores) -> None:
    first = _create_app(stores)
    _create_app(stores, user="bob")
    second = _create_app(stores)
    apps = stores.applications
    other = apps.create_application({"application_name": "other"}, [], "Admin")
    found = apps.find_applications("Admin", "app")
    assert [a["applicationID"] for a in found] == [first["applicationID"], second["applicationID"]]
    assert [a["applicationID"] for a in apps.find_applications("Admin", "other")] == [other["applicationID"]]
    assert apps.find_applications("carol", "app") == []
    assert apps.find_applications("Admin", "nope") == []


def test_update_application_keeps_owned_fields(stores: Stores) -> None:
    app = _create_app(stores)
    apps = stores.applications
    updated = apps.update_application(app["applicationID"], {
        "application_desc": "new", "applicationID": "hijack", "userId": "mallory", "microservices": []})
    assert updated == {**app, "application_desc": "new"}
    assert apps.get_application(app["applicationID"]) == updated
    assert apps.find_applications("Admin", "app") == [updated]
    with pytest.raises(NotFound):
        apps.update_application("0" * 24, {"application_desc": "x"})


def test_add_service_links_it_to_its_application(stores: Stores) -> None:
    app = _create_app(stores)
    apps = stores.applications
    added = apps.add_service(app["applicationID"], {"microservice_name": "c", "status": "REQUESTED",
                                                    "service_id": "ignored", "revision": 7})
    sid = added["service_id"]
    assert sid != "ignored" and len(sid) == 24
    assert (added["application_id"], added["revision"], added["microservice_name"]) == (
        app["applicationID"], 1, "c")
    assert apps.get_service(sid) == added
    assert apps.get_application(app["applicationID"])["microservices"] == [*app["microservices"], sid]
    assert [s["microservice_name"] for s in apps.list_services(app["applicationID"])] == ["a", "b", "c"]
    before = len(apps.list_services())
    with pytest.raises(NotFound):
        apps.add_service("0" * 24, {"microservice_name": "d"})
    assert len(apps.list_services()) == before  # nothing stored
    deleted = apps.delete_application(app["applicationID"])
    assert sid in {s["service_id"] for s in deleted}


def test_delete_service_unlinks_it(stores: Stores) -> None:
    app = _create_app(stores)
    gone, kept = app["microservices"]
    assert stores.applications.delete_service(gone)["service_id"] == gone
    assert stores.applications.get_application(app["applicationID"])["microservices"] == [kept]
    with pytest.raises(NotFound):
        stores.applications.delete_service(gone)


# -- clusters ------------------------------------------------------------------------------------------

def test_cluster_register_is_idempotent_by_name(stores: Stores) -> None:
    first, created = stores.clusters.register("c1", "eu", "http://a:1", now=10.0)
    again, created_again = stores.clusters.register("c1", "eu", "http://a:2", now=20.0)
    assert created and not created_again
    assert again["cluster_id"] == first["cluster_id"]
    assert (again["url"], again["registered_at"]) == ("http://a:2", 20.0)
    stores.clusters.register("c0", "us", "http://b:1", now=5.0)
    assert [c["cluster_name"] for c in stores.clusters.list()] == ["c0", "c1"]


def test_cluster_aggregate_update(stores: Stores) -> None:
    cid = stores.clusters.register("c1", "", "http://a:1", now=1.0)[0]["cluster_id"]
    doc = stores.clusters.update_aggregate(cid, {"active_nodes": 3}, now=5.0)
    assert (doc["aggregate"], doc["last_push"]) == ({"active_nodes": 3}, 5.0)
    assert stores.clusters.get(cid)["aggregate"] == {"active_nodes": 3}
    with pytest.raises(NotFound):
        stores.clusters.update_aggregate("nope", {}, now=1.0)


# -- persistence ---------------------------------------------------------------------------------------

def test_state_survives_reopening(opener: Callable[[], Stores]) -> None:
    first = opener()
    sha = first.artifacts.put(b"model bytes").sha256
    first.models.create_version("m", sha, 11, SIG)
    first.models.set_alias("m", "prod", 1)
    cid = first.clusters.register("c1", "", "http://a:1", now=1.0)[0]["cluster_id"]
    app = _create_app(first)
    first.close()
    second = opener()
    assert second.artifacts.get(sha) == b"model bytes"
    assert second.models.get_version("m", "prod")["sha256"] == sha
    assert second.models.create_version("m", sha, 11, SIG)["version"] == 2
    assert second.clusters.register("c1", "", "http://a:1", now=2.0)[0]["cluster_id"] == cid
    assert second.applications.get_application(app["applicationID"])["microservices"] == app["microservices"]


def test_unknown_scheme_lists_known_ones() -> None:
    with pytest.raises(InvalidInput) as exc:
        open_stores("redis://localhost")
    for scheme in known_schemes():
        assert scheme in exc.value.message


def test_profiles_survive_reopening(opener: Callable[[], Stores]) -> None:
    first = opener()
    first.models.create_version("m", _sha(b"m"), 1, SIG)
    first.models.put_profile("m", 1, "server", {"op_ms": {"x": 1.0}})
    first.close()
    assert opener().models.get_profile("m", 1, "server") == {"op_ms": {"x": 1.0}}


def test_users_and_owners_survive_reopening(opener: Callable[[], Stores]) -> None:
    first = opener()
    alice = first.users.create_user("alice", "h", ["application_provider"], 1.0)
    first.users.create_cluster_token("t1", _sha(b"s"), alice["user_id"], "", 1.0)
    first.models.create_version("m", _sha(b"m"), 1, SIG, owner=alice["user_id"])
    first.close()
    second = opener()
    assert second.users.find_user("alice") == alice
    assert second.users.get_cluster_token("t1")["secret_sha256"] == _sha(b"s")
    assert second.models.get_version("m", 1)["owner"] == alice["user_id"]
