"""Shared fixtures: a real MQTT broker on a free loopback port, per test module; the cluster's
MQTT observer on it; data plane servers closed after each test.

This folder is on ``sys.path`` (no ``__init__.py``, pytest's "prepend" import mode), so test
modules import their shared helpers with ``from treeline_test_helpers import ...``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from treeline_cli.broker import BrokerProcess, start_broker
from treeline_test_helpers import Observer


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
