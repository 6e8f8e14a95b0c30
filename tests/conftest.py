"""Shared fixtures: a real MQTT broker on a free loopback port, per test module; the cluster's
MQTT observer on it; data plane servers closed after each test.

This folder is on ``sys.path`` (no ``__init__.py``, pytest's "prepend" import mode), so test
modules import their shared helpers with ``from treeline_test_helpers import ...``.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pymongo
import pytest
from treeline_test_helpers import Observer

from treeline_cli.broker import BrokerProcess, start_broker
from treeline_common.mongo_server import MongoServerProcess, start_mongo_server

# `make test` runs two workers, one file at a time each (pytest-xdist --dist loadfile), files handed
# out in collection order: the files that run longest go first and the many short unit files last,
# so both workers finish together instead of one waiting on a long file that started last.
LONGEST_FILES = ("test_fuzz_root.py", "test_faults_control_plane.py", "test_node_simulator.py",
                 "test_faults_nodes.py", "test_fuzz_cluster.py", "test_root_process.py")
FOLDER_ORDER = ("e2e", "integration", "contract", "unit")


def _run_order(item: pytest.Item) -> tuple[int, int]:
    path = Path(str(item.fspath))
    if path.name in LONGEST_FILES:
        return 0, LONGEST_FILES.index(path.name)
    folder = path.parent.name
    return 1, FOLDER_ORDER.index(folder) if folder in FOLDER_ORDER else len(FOLDER_ORDER)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Longest files first, then e2e, integration, contract and unit tests (a stable sort: the
    tests of one file stay together and in their order)."""
    items.sort(key=_run_order)


@pytest.fixture(scope="module")
def mqtt_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    """Mosquitto when installed (as in CI), else the amqtt fallback; stopped after the module."""
    broker = start_broker("auto", workdir=tmp_path_factory.mktemp("broker"))
    yield broker
    broker.stop()


@pytest.fixture(scope="module")
def observer(mqtt_broker: BrokerProcess) -> Iterator[Observer]:
    """Every message on ``nodes/#`` of the module's broker, recorded per topic; disconnected after."""
    obs = Observer.connect(mqtt_broker)
    yield obs
    obs.close()


@pytest.fixture
def servers() -> Iterator[list[Any]]:
    """Data plane servers a test starts (``start_data_plane_server``); all closed after the test."""
    made: list[Any] = []
    yield made
    for server in made:
        server.close()


@pytest.fixture(scope="session")
def mongo_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MongoServerProcess]:
    """One embedded MongoDB wire-protocol server (nx-27017) for the whole session."""
    server = start_mongo_server(tmp_path_factory.mktemp("mongo"))
    yield server
    server.stop()


@pytest.fixture
def mongo_url(mongo_server: MongoServerProcess) -> Iterator[str]:
    """``mongodb://host:port/<fresh database>`` on the session's embedded server (one per test,
    dropped afterwards)."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    yield mongo_server.db_url(name)
    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(mongo_server.url)
    try:
        client.drop_database(name)
    finally:
        client.close()
