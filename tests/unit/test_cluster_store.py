"""Every cluster store backend honours the same contract (version guard, unique names, copies):
MongoDB on the embedded wire server (the one store; what ``treeline up`` uses) and the in-memory twin
that unit tests of other parts use."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from cluster_orchestrator.store import ClusterStateStore, InMemoryClusterStateStore
from cluster_orchestrator.store_mongo import MongoClusterStateStore, open_cluster_store
from treeline_common.errors import Conflict, InvalidInput


@pytest.fixture(params=["mongo", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ClusterStateStore]:
    backend: ClusterStateStore
    if request.param == "mongo":
        backend = open_cluster_store(request.getfixturevalue("mongo_url"), tmp_path)
        assert isinstance(backend, MongoClusterStateStore)
    else:
        backend = InMemoryClusterStateStore()
    yield backend
    backend.close()


def test_nodes_by_id_and_name(store: ClusterStateStore) -> None:
    store.put_node({"node_id": "a", "name": "n1", "x": 1})
    store.put_node({"node_id": "a", "name": "n1", "x": 2})
    assert store.get_node("a")["x"] == 2 and store.find_node_by_name("n1")["node_id"] == "a"
    with pytest.raises(Conflict):
        store.put_node({"node_id": "b", "name": "n1"})
    assert [n["node_id"] for n in store.list_nodes()] == ["a"]


def test_deployment_version_guard(store: ClusterStateStore) -> None:
    first = store.put_deployment({"deployment_id": "d", "status": "REQUESTED"}, expected_version=0)
    assert first["version"] == 1
    with pytest.raises(Conflict):
        store.put_deployment({"deployment_id": "d", "status": "X"}, expected_version=0)
    second = store.put_deployment(dict(first, status="RUNNING"), expected_version=1)
    assert second["version"] == 2 and store.get_deployment("d")["status"] == "RUNNING"
    assert store.delete_deployment("d") and store.get_deployment("d") is None
    with pytest.raises(Conflict):
        store.put_deployment({"deployment_id": "d"}, expected_version=2)  # deleted meanwhile


def test_documents_are_copies(store: ClusterStateStore) -> None:
    store.put_deployment({"deployment_id": "d", "placement": {"stages": []}})
    doc = store.get_deployment("d")
    doc["placement"]["stages"].append(1)
    assert store.get_deployment("d")["placement"]["stages"] == []


def test_concurrent_writers_of_one_version_one_wins(store: ClusterStateStore) -> None:
    """Compare-and-set: eight writers that all read version 1; exactly one write lands."""
    store.put_deployment({"deployment_id": "d", "status": "REQUESTED"}, expected_version=0)
    outcomes: list[str] = []
    lock = threading.Lock()

    def writer(i: int) -> None:
        try:
            store.put_deployment({"deployment_id": "d", "status": f"w{i}"}, expected_version=1)
            result = f"w{i}"
        except Conflict:
            result = "conflict"
        with lock:
            outcomes.append(result)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [o for o in outcomes if o != "conflict"]
    assert len(winners) == 1 and outcomes.count("conflict") == 7
    stored = store.get_deployment("d")
    assert stored is not None and (stored["status"], stored["version"]) == (winners[0], 2)
    blind = store.put_deployment({"deployment_id": "d", "status": "blind", "version": 99})
    assert blind["version"] == 3 and store.list_deployments() == [blind]


def test_settings_hold_json_values(store: ClusterStateStore) -> None:
    assert store.get_setting("k") is None
    store.set_setting("k", {"a.b": [1, 2], "$x": None})
    store.set_setting("k", {"a.b": [3], "$x": "y"})
    assert store.get_setting("k") == {"a.b": [3], "$x": "y"}


def test_mongo_survives_reopen(mongo_url: str, tmp_path: Path) -> None:
    first = open_cluster_store(mongo_url, tmp_path)
    first.put_node({"node_id": "a", "name": "n1"})
    first.put_deployment({"deployment_id": "d", "status": "RUNNING"})
    first.set_setting("cluster_id", "c-1")
    first.close()
    again = open_cluster_store(mongo_url, tmp_path)
    assert again.get_node("a") == {"node_id": "a", "name": "n1"}
    assert again.get_deployment("d") == {"deployment_id": "d", "status": "RUNNING", "version": 1}
    assert again.get_setting("cluster_id") == "c-1"
    again.close()


def test_unknown_store_scheme_names_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput) as exc:
        open_cluster_store("redis://x", tmp_path)
    assert "mongodb" in exc.value.message and exc.value.details[0]["path"] == "store_url"
