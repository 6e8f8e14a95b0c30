"""The stack's store: `treeline up` starts one embedded MongoDB wire server (process ``mongo``) that
the root and each cluster use (each its own database) and that keeps their state across a stop
and a start on the same data dir; with ``mongo_url`` the stack uses that MongoDB and starts none."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pymongo
import pytest

from treeline_common.mongo_server import MongoServerProcess
from treeline_cli.stack import Stack, StackConfig, pick_ports, start_stack
from treeline_cli.stack_mongo import ROOT_DATABASE, cluster_database

pytestmark = pytest.mark.integration


def _started(config: StackConfig) -> Stack:
    stack = start_stack(pick_ports(config), timeout=60)
    try:
        stack.wait_ready(timeout=60)
    except BaseException:
        stack.stop()
        raise
    return stack


def _state(url: str) -> tuple[list[str], list[str]]:
    """(cluster ids registered at the root, the setting keys cluster 1 stored) on the server ``url``."""
    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(url, serverSelectionTimeoutMS=5000)
    try:
        clusters = [d["_id"] for d in client[ROOT_DATABASE].clusters.find()]
        settings = [d["_id"] for d in client[cluster_database(1)].settings.find()]
        return clusters, settings
    finally:
        client.close()


def test_up_runs_on_its_own_mongo_and_keeps_state_across_restarts(tmp_path: Path) -> None:
    config = StackConfig(data_dir=tmp_path, nodes=0)
    stack = _started(config)
    try:
        mongo = stack.process("mongo")
        assert mongo.alive() and stack.mongo_url.startswith("mongodb://127.0.0.1:")
        clusters, settings = _state(stack.mongo_url)
        assert len(clusters) == 1 and settings  # the root and the cluster both wrote to it
    finally:
        stack.stop()
    assert not mongo.alive()
    assert not (tmp_path / "root" / "root" / "root.db").exists()  # no SQLite store beside it
    assert not (tmp_path / "cluster" / "cluster.sqlite").exists()
    assert (tmp_path / "mongo" / "db" / f"{ROOT_DATABASE}.db").exists()

    again = _started(StackConfig(data_dir=tmp_path, nodes=0))
    try:
        assert _state(again.mongo_url)[0] == clusters  # same cluster id: the state persisted
    finally:
        again.stop()


def test_up_with_mongo_url_starts_no_server(tmp_path: Path, mongo_server: MongoServerProcess) -> None:
    stack = _started(StackConfig(data_dir=tmp_path, nodes=0, mongo_url=mongo_server.url))
    try:
        assert "mongo" not in [m.name for m in stack.processes]
        assert stack.mongo_url == mongo_server.url
        assert len(_state(mongo_server.url)[0]) == 1
    finally:
        stack.stop()
        client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(mongo_server.url)
        for name in (ROOT_DATABASE, cluster_database(1)):
            client.drop_database(name)
        client.close()
