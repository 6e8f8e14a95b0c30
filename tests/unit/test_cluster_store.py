"""Both store backends honour the same contract (version guard, unique names, copies)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from cluster_orchestrator.store import ClusterStateStore, InMemoryClusterStateStore, SqliteClusterStateStore
from treeline_common.errors import Conflict


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ClusterStateStore]:
    backend = InMemoryClusterStateStore() if request.param == "memory" else SqliteClusterStateStore(
        tmp_path / "c.sqlite")
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


def test_sqlite_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite"
    first = SqliteClusterStateStore(path)
    first.put_node({"node_id": "a", "name": "n1"})
    first.put_deployment({"deployment_id": "d", "status": "RUNNING"})
    first.set_setting("cluster_id", "c-1")
    first.close()
    again = SqliteClusterStateStore(path)
    assert again.get_node("a")["name"] == "n1"
    assert again.get_deployment("d")["version"] == 1 and again.get_setting("cluster_id") == "c-1"
    again.close()
