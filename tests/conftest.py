"""Shared fixtures: a real MQTT broker on a free loopback port, per test module."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from treeline_cli.broker import BrokerProcess, start_broker


@pytest.fixture(scope="module")
def mqtt_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    """Mosquitto when installed (as in CI), else the amqtt fallback; stopped after the module."""
    broker = start_broker("auto", workdir=tmp_path_factory.mktemp("broker"))
    yield broker
    broker.stop()
