"""The registry's lifecycle through Flask's test client on the embedded MongoDB wire server: version
metadata (PATCH), compare-and-set aliases (with a race), version delete refusals, partition records."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from test_root_api import Root, _error, ml_sla, tiny_onnx

from root_orchestrator.stores import mongo_registry, open_stores


@pytest.fixture
def root(mongo_url: str) -> Iterator[Root]:
    stores = open_stores(mongo_url)
    yield Root(stores)
    stores.close()


def _paths(error: dict[str, Any]) -> set[str]:
    return {str(d.get("path")) for d in error["details"]}


# -- PATCH: description, tags, metrics, lineage -----------------------------------------------------

def test_patch_merges_tags_and_metrics_by_key(root: Root) -> None:
    root.register_model(description="first")
    patch = root.http.patch
    quality = {"accuracy": 0.91, "dataset": "digits"}
    r = patch("/api/models/tiny/versions/1", json={
        "description": "fp32 baseline", "tags": {"a": "1", "b": "2"},
        "metrics": {"quality": quality, "latency/server": {"p50_ms": 1.5}}})
    assert r.status_code == 200, r.get_json()
    r = patch("/api/models/tiny/versions/latest", json={"tags": {"a": None, "c": "3", "x.y": "dotted"},
                                                        "metrics": {"latency/edge": {"p50_ms": 9.0,
                                                                                     "energy_mj": 2.5}}})
    doc = r.get_json()
    assert doc["description"] == "fp32 baseline" and doc["version"] == 1
    assert doc["tags"] == {"b": "2", "c": "3", "x.y": "dotted"}
    assert doc["metrics"] == {"quality": quality, "latency/server": {"p50_ms": 1.5},
                              "latency/edge": {"p50_ms": 9.0, "energy_mj": 2.5}}
    r = patch("/api/models/tiny/versions/1", json={"metrics": {"latency/server": None,
                                                               "quality": {"agreement": 0.99}}})
    assert r.get_json()["metrics"] == {"quality": {"agreement": 0.99}, "latency/edge": {"p50_ms": 9.0,
                                                                                         "energy_mj": 2.5}}
    shown = root.http.get("/api/models/tiny/versions/1").get_json()
    assert shown["tags"] == doc["tags"] and shown["metrics"]["quality"] == {"agreement": 0.99}
    assert shown["lineage"] is None and shown["partitions"] == []
    assert shown["sha256"] == hashlib.sha256(tiny_onnx()).hexdigest()  # the immutable part is kept


def test_lineage_is_set_once_and_needs_an_existing_parent_without_cycles(root: Root) -> None:
    root.register_model("base")
    root.register_model("base-int8", data=tiny_onnx(3.0))
    lineage = {"parent": {"name": "base", "version": 1}, "operation": "quantize",
               "parameters": {"mode": "qdq", "per_channel": True}, "dataset": "digits-calib",
               "tools": {"onnxruntime": "1.31.0"}}
    missing = {**lineage, "parent": {"name": "base", "version": 7}}
    child = "/api/models/base-int8/versions/1"
    err = _error(root.http.patch(child, json={"lineage": missing}), 404, "NOT_FOUND")
    assert _paths(err) == {"lineage.parent"}
    r = root.http.patch("/api/models/base-int8/versions/1", json={"lineage": lineage})
    assert r.status_code == 200 and r.get_json()["lineage"] == lineage
    err = _error(root.http.patch(child, json={"lineage": lineage}), 409, "CONFLICT")
    assert _paths(err) == {"lineage"}
    cycle = {**lineage, "parent": {"name": "base-int8", "version": 1}}
    base = "/api/models/base/versions/1"
    err = _error(root.http.patch(base, json={"lineage": cycle}), 400, "INVALID_INPUT")
    assert _paths(err) == {"lineage.parent"}
    selfish = {**lineage, "parent": {"name": "base", "version": 1}}
    _error(root.http.patch("/api/models/base/versions/1", json={"lineage": selfish}), 400, "INVALID_INPUT")
    assert root.http.get("/api/models/base/versions/1").get_json()["lineage"] is None


def test_lineage_is_set_once_under_concurrent_patches(root: Root) -> None:
    root.register_model("base")
    root.register_model("child", data=tiny_onnx(3.0))
    statuses: list[int] = []
    barrier = threading.Barrier(4)

    def patch(k: int) -> None:
        client = root.login_as(root.admin)
        barrier.wait()
        r = client.patch("/api/models/child/versions/1", json={"lineage": {
            "parent": {"name": "base", "version": 1}, "operation": f"op{k}"}})
        statuses.append(r.status_code)

    threads = [threading.Thread(target=patch, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(statuses) == [200, 409, 409, 409]


BAD_PATCHES: list[tuple[Any, set[str]]] = [
    ({"description": 5}, {"description"}),
    ({"description": "x" * 5001}, {"description"}),
    ({"tags": ["a"]}, {"tags"}),
    ({"tags": {"k": 5}}, {"tags.k"}),
    ({"tags": {"bad key!": "v"}}, {"tags.bad key!"}),
    ({"tags": {"k": "v" * 300}}, {"tags.k"}),
    ({"metrics": {"quality": 0.9}}, {"metrics.quality"}),
    ({"metrics": {"quality": {"accuracy": True}}}, {"metrics.quality.accuracy"}),
    ('{"metrics": {"quality": {"accuracy": 1e999}}}', {""}),  # raw text: the JSON decoder refuses it
    ({"metrics": {"quality": {"dataset": "d" * 300}}}, {"metrics.quality.dataset"}),
    ({"metrics": {"latency/server": {"p50_ms": -1}}}, {"metrics.latency/server.p50_ms"}),
    ({"metrics": {"latency/a/b": {"p50_ms": 1}}}, {"metrics.latency/a/b"}),
    ({"lineage": {"parent": {"name": "tiny"}, "operation": "quantize"}}, {"lineage.parent.version"}),
    ({"lineage": {"parent": {"name": "tiny", "version": 1}}}, {"lineage.operation"}),
    ({"lineage": {"parent": {"name": "tiny", "version": 1}, "operation": "q", "tools": {"onnx": 1}}},
     {"lineage.tools.onnx"}),
    ({"tag": {"a": "b"}}, {"tag"}),
    ({"metrics": {"latency/server": {"p50_ms": "fast"}}}, {"metrics.latency/server.p50_ms"}),
    ({"tags": {"k": 1}, "metrics": {"latency/server": {"p50_ms": None}}},
     {"tags.k", "metrics.latency/server.p50_ms"}),
    ({"metrics": {"latency/server": {"p50_ms": -1, "energy_mj": -2}}, "tags": {"bad key!": "v"}},
     {"tags.bad key!", "metrics.latency/server.p50_ms", "metrics.latency/server.energy_mj"}),
    (["not", "an", "object"], {""}),
]


@pytest.mark.parametrize("body, paths", BAD_PATCHES, ids=[str(i) for i in range(len(BAD_PATCHES))])
def test_patch_validation_names_every_bad_field(root: Root, body: Any, paths: set[str]) -> None:
    root.register_model()
    sent = ({"data": body, "content_type": "application/json"} if isinstance(body, str) else {"json": body})
    err = _error(root.http.patch("/api/models/tiny/versions/1", **sent), 400, "INVALID_INPUT")
    assert paths <= _paths(err), err
    doc = root.http.get("/api/models/tiny/versions/1").get_json()
    assert (doc["tags"], doc["metrics"], doc["lineage"]) == ({}, {}, None)  # nothing stored


def test_patch_of_a_missing_version_or_another_users_model_is_404(root: Root) -> None:
    root.register_model()
    _error(root.http.patch("/api/models/tiny/versions/3", json={"description": "x"}), 404, "NOT_FOUND")
    bob = root.login_as(root.add_user("bob"))
    _error(bob.patch("/api/models/tiny/versions/1", json={"description": "x"}), 404, "NOT_FOUND")


# -- aliases: compare-and-set, events ---------------------------------------------------------------

def test_alias_compare_and_set_and_events(root: Root, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mongo_registry, "ALIAS_EVENTS_KEPT", 3)
    for scale in (1.0, 2.0, 3.0):
        root.register_model(data=tiny_onnx(scale))
    put = root.http.put
    assert put("/api/models/tiny/aliases/prod", json={"version": 1, "expected": None}).status_code == 200
    err = _error(put("/api/models/tiny/aliases/prod", json={"version": 2, "expected": None}), 409, "CONFLICT")
    assert "version 1" in err["message"] and err["details"][0]["current"] == 1
    err = _error(put("/api/models/tiny/aliases/prod", json={"version": 2, "expected": 3}), 409, "CONFLICT")
    assert "points at version 1, not version 3" in err["message"]
    moved = put("/api/models/tiny/aliases/prod", json={"version": 2, "expected": 1})
    assert moved.get_json()["aliases"] == ["prod"]
    assert put("/api/models/tiny/aliases/prod", json={"version": 3}).status_code == 200  # unconditional
    _error(put("/api/models/tiny/aliases/prod", json={"version": 9}), 404, "NOT_FOUND")
    _error(put("/api/models/tiny/aliases/prod", json={"version": "2"}), 400, "INVALID_INPUT")
    _error(put("/api/models/tiny/aliases/latest", json={"version": 2}), 400, "INVALID_INPUT")
    delete = root.http.delete
    _error(delete("/api/models/tiny/aliases/prod?expected=2"), 409, "CONFLICT")
    assert delete("/api/models/tiny/aliases/prod?expected=3").get_json()["version"] == 3
    _error(delete("/api/models/tiny/aliases/prod"), 404, "NOT_FOUND")
    _error(root.http.get("/api/models/tiny/versions/prod"), 404, "NOT_FOUND")
    body = root.http.get("/api/models/tiny/aliases").get_json()
    assert body["aliases"] == {}
    events = body["events"]
    # four changes, the last 3 kept: the first move (None -> 1) was dropped
    assert [(e["alias"], e["version"], e["previous"]) for e in events] == [
        ("prod", 2, 1), ("prod", 3, 2), ("prod", None, 3)]
    assert {e["by"] for e in events} == {"root-admin"} and all(e["at"] == root.clock.now() for e in events)


def test_eight_racing_alias_moves_from_one_expected_value_have_one_winner(root: Root) -> None:
    for scale in range(1, 10):
        root.register_model(data=tiny_onnx(float(scale)))
    assert root.http.put("/api/models/tiny/aliases/prod", json={"version": 1}).status_code == 200
    barrier = threading.Barrier(8)
    results: dict[int, int] = {}

    def move(target: int) -> None:
        client = root.login_as(root.admin)
        barrier.wait()
        results[target] = client.put("/api/models/tiny/aliases/prod",
                                     json={"version": target, "expected": 1}).status_code

    threads = [threading.Thread(target=move, args=(v,)) for v in range(2, 10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [v for v, status in results.items() if status == 200]
    assert len(winners) == 1 and sorted(results.values()) == [200] + [409] * 7
    assert root.http.get("/api/models/tiny/versions/prod").get_json()["version"] == winners[0]
    events = root.http.get("/api/models/tiny/aliases").get_json()["events"]
    assert [(e["version"], e["previous"]) for e in events] == [(1, None), (winners[0], 1)]


# -- version delete -----------------------------------------------------------------------------------

def _renamed(sla: dict[str, Any], application_name: str) -> dict[str, Any]:
    sla["applications"][0]["application_name"] = application_name
    return sla


def test_delete_version_is_refused_while_an_sla_or_an_instance_uses_it(root: Root) -> None:
    root.register_model()
    root.register_cluster("c", "http://c:1", active_nodes=2, memory=1000)
    sid = root.submit(ml_sla("latest"))
    assert root.http.post(f"/api/service/{sid}/instance").status_code == 200  # instance 0 runs v1
    root.register_model(data=tiny_onnx(4.0))  # v2 is now `latest`
    err = _error(root.http.delete("/api/models/tiny/versions/1"), 409, "CONFLICT")
    assert "vision/classifier" in err["message"] and "runs tiny:1" in err["details"][0]["message"]
    err = _error(root.http.delete("/api/models/tiny/versions/latest"), 409, "CONFLICT")
    assert "resolves model 'tiny' (latest) to version 2" in err["details"][0]["message"]
    root.http.put("/api/models/tiny/aliases/prod", json={"version": 2})
    by_alias = root.submit(_renamed(ml_sla("prod"), "vision-prod"))
    root.register_model(data=tiny_onnx(5.0))  # latest moves on, the alias still names v2
    err = _error(root.http.delete("/api/models/tiny/versions/2"), 409, "CONFLICT")
    assert [d["path"] for d in err["details"]] == [f"services.{by_alias}"]
    assert root.http.delete(f"/api/service/{sid}").status_code == 200
    assert root.http.delete("/api/models/tiny/versions/1").status_code == 200
    assert root.http.delete(f"/api/service/{by_alias}").status_code == 200
    assert root.http.delete("/api/models/tiny/versions/2").status_code == 200
    versions = root.http.get("/api/models/tiny/versions").get_json()["versions"]
    assert [v["version"] for v in versions] == [3]


def test_delete_version_drops_unshared_artifacts_aliases_and_moves_latest(root: Root) -> None:
    shared = tiny_onnx(1.0)
    root.register_model(data=shared)
    root.register_model(data=shared, alias="prod")  # v2: same bytes
    own = tiny_onnx(7.0)
    root.register_model(data=own, alias="canary")  # v3
    sha_shared, sha_own = hashlib.sha256(shared).hexdigest(), hashlib.sha256(own).hexdigest()
    r = root.http.delete("/api/models/tiny/versions/2")
    assert r.get_json() == {"deleted": "tiny:2", "name": "tiny", "version": 2, "artifacts_deleted": []}
    assert root.http.get(f"/api/artifacts/{sha_shared}").status_code == 200
    assert root.http.delete("/api/models/tiny/versions/canary").get_json()["artifacts_deleted"] == [sha_own]
    assert root.http.get(f"/api/artifacts/{sha_own}").status_code == 404
    assert root.http.get("/api/models/tiny/versions/latest").get_json()["version"] == 1
    assert root.http.get("/api/models/tiny/aliases").get_json()["aliases"] == {}
    events = root.http.get("/api/models/tiny/aliases").get_json()["events"]
    assert [(e["alias"], e["version"], e["previous"]) for e in events] == [("prod", None, 2),
                                                                          ("canary", None, 3)]
    assert root.register_model(data=tiny_onnx(8.0))["version"] == 4  # numbers are never reused
    assert root.http.delete("/api/models/tiny/versions/1").status_code == 200
    assert root.http.delete("/api/models/tiny/versions/4").status_code == 200  # the last: the model goes
    assert root.http.get("/api/models/").get_json() == {"models": []}
    assert root.http.get(f"/api/artifacts/{sha_shared}").status_code == 404


# -- partitions -------------------------------------------------------------------------------------

def test_clusters_record_partitions_of_a_version(root: Root) -> None:
    root.register_model()
    cluster = root.cluster_client()
    sha = [hashlib.sha256(bytes([i])).hexdigest() for i in range(2)]
    record = {"deployment_id": "svc-0", "stage": 1, "ops": [2, 4], "flops": 80, "param_bytes": 64,
              "cut_bytes": 0}
    r = cluster.put(f"/api/models/tiny/versions/latest/partitions/{sha[1]}", json=record)
    assert r.status_code == 200, r.get_json()
    first = {**record, "stage": 0, "ops": [0, 2], "cut_bytes": 16}
    assert cluster.put(f"/api/models/tiny/versions/1/partitions/{sha[0]}", json=first).status_code == 200
    again = {**first, "deployment_id": "svc-1"}
    assert cluster.put(f"/api/models/tiny/versions/1/partitions/{sha[0]}", json=again).status_code == 200
    parts = root.http.get("/api/models/tiny/versions/1").get_json()["partitions"]
    assert [(p["sha256"], p["stage"], p["ops"], p["cut_bytes"]) for p in parts] == [
        (sha[0], 0, [0, 2], 16), (sha[1], 1, [2, 4], 0)]
    assert parts[0]["deployments"] == ["svc-0", "svc-1"]
    bad = cluster.put(f"/api/models/tiny/versions/1/partitions/{sha[0]}", json={**record, "ops": [3, 1]})
    assert _paths(_error(bad, 400, "INVALID_INPUT")) == {"ops"}
    bad = cluster.put(f"/api/models/tiny/versions/1/partitions/{sha[0]}", json={**record, "flops": -1})
    assert _paths(_error(bad, 400, "INVALID_INPUT")) == {"flops"}
    _error(cluster.put("/api/models/tiny/versions/1/partitions/nope", json=record), 400, "INVALID_INPUT")
    _error(cluster.put(f"/api/models/tiny/versions/5/partitions/{sha[0]}", json=record), 404, "NOT_FOUND")
    user = root.login_as(root.add_user("alice"))
    _error(user.put(f"/api/models/tiny/versions/1/partitions/{sha[0]}", json=record), 403, "FORBIDDEN")
