"""Moving an alias rolls the services that name the model by it onto the new version (the cluster
then runs the canary); a version registered under ``latest`` does not roll anything by itself."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from test_root_api import Root, ml_sla, tiny_onnx
from test_root_failover import push, report

from root_orchestrator.stores import open_stores


@pytest.fixture()
def root(mongo_url: str) -> Iterator[Root]:
    stores = open_stores(mongo_url)
    yield Root(stores)
    stores.close()


def running_on_alias(root: Root) -> tuple[str, str]:
    """tiny v1 (alias prod) deployed and RUNNING on cluster a by a service naming ``prod``."""
    root.register_model(alias="prod")
    cid = root.register_cluster("a", "http://a:1", active_nodes=1, memory=1000)
    sid = root.submit(ml_sla("prod"))
    assert root.http.post(f"/api/service/{sid}/instance").status_code in (200, 201, 202)
    push(root, cid, report(sid, "RUNNING"))
    return cid, sid


def test_moving_the_alias_rolls_the_service_onto_the_new_version(root: Root) -> None:
    _, sid = running_on_alias(root)
    v2 = root.register_model(data=tiny_onnx(3.0))  # latest moves: nothing rolls by itself
    assert "rollouts" not in v2
    assert len(root.clusters.deployed) == 1
    moved = root.http.put("/api/models/tiny/aliases/prod", json={"version": v2["version"], "expected": 1})
    assert moved.status_code == 200, moved.get_json()
    [row] = moved.get_json()["rollouts"]
    assert (row["service_id"], row["old"], row["new"], row["rollout"]) == (sid, 0, 0, True)
    url, service_id, number, job = root.clusters.deployed[-1]
    assert (url, service_id, number) == ("http://a:1", sid, 0)
    assert job["model"]["sha256"] == v2["sha256"]  # the same instance asks for the new version
    events = root.http.get(f"/api/service/{sid}/events").get_json()["events"]
    assert any(e["kind"] == "rollout_requested" for e in events)
    again = root.http.put("/api/models/tiny/aliases/prod", json={"version": v2["version"]})
    assert again.get_json()["rollouts"] == [] and len(root.clusters.deployed) == 2  # already there


def test_registering_with_the_alias_rolls_too_and_other_aliases_do_not(root: Root) -> None:
    _, sid = running_on_alias(root)
    staged = root.register_model(data=tiny_onnx(4.0), alias="staging")
    assert staged["rollouts"] == [] and len(root.clusters.deployed) == 1  # nobody names staging
    prod = root.register_model(data=tiny_onnx(5.0), alias="prod")
    assert [r["service_id"] for r in prod["rollouts"]] == [sid]
    assert root.clusters.deployed[-1][3]["model"]["sha256"] == prod["sha256"]
