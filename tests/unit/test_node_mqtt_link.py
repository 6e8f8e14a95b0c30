"""MqttLink against a real broker: failing handlers and hooks never silence the link.

paho-mqtt 2.x re-raises callback exceptions and its network thread then dies while
``is_connected()`` still reads True; these tests make handlers, the connect hook and the
will callable fail and check that later messages still arrive.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from treeline_test_helpers import DEADLINE, mqtt_client

from node_engine.mqtt_link import MqttLink
from treeline_common.netutil import poll_until

TOPIC = "nodes/link-test/in"


@pytest.fixture
def publisher(mqtt_broker: Any) -> Iterator[Callable[[str, bytes], None]]:
    client = mqtt_client(mqtt_broker)

    def publish(topic: str, payload: bytes) -> None:
        client.publish(topic, payload, qos=1).wait_for_publish(5)

    yield publish
    client.disconnect()
    client.loop_stop()


@pytest.fixture
def links() -> Iterator[list[MqttLink]]:
    made: list[MqttLink] = []
    yield made
    for link in made:
        link.stop()


def _link(links: list[MqttLink], broker: Any, name: str, **kwargs: Any) -> MqttLink:
    link = MqttLink(name, broker.host, broker.port, **kwargs)
    links.append(link)
    return link


class Inbox:
    """Handler recording payloads; raises for payloads starting with ``boom``."""

    def __init__(self) -> None:
        self.got: list[bytes] = []
        self.cond = threading.Condition()

    def __call__(self, payload: bytes) -> None:
        if payload.startswith(b"boom-recursion"):
            raise RecursionError("maximum recursion depth exceeded")
        if payload.startswith(b"boom-json"):
            json.loads("[" * 200_000 + "]" * 200_000)  # RecursionError from the decoder itself
        if payload.startswith(b"boom"):
            raise ValueError("bad payload")
        with self.cond:
            self.got.append(payload)
            self.cond.notify_all()

    def wait_for(self, payload: bytes, timeout: float = DEADLINE) -> None:
        with self.cond:
            arrived = self.cond.wait_for(lambda: payload in self.got, timeout)
            assert arrived, f"{payload!r} never arrived: {self.got}"

    def has(self, payload: bytes) -> bool:
        with self.cond:
            return payload in self.got

    def ready(self, publish: Callable[[str, bytes], None], payload: bytes = b"ready") -> None:
        """Publish ``payload`` until it arrives: the subscription is live (SUBACK is not observable)."""
        def delivered() -> bool:
            if self.has(payload):
                return True
            publish(TOPIC, payload)
            return False

        poll_until(delivered, DEADLINE, interval=0.2, what=f"{payload!r} delivered")
        self.wait_for(payload)
        with self.cond:
            self.got = [p for p in self.got if p != payload]


def test_handler_exceptions_do_not_stop_later_deliveries(mqtt_broker: Any, links: list[MqttLink],
                                                        publisher: Callable[[str, bytes], None]) -> None:
    inbox = Inbox()
    link = _link(links, mqtt_broker, "link-handler")
    link.subscribe(TOPIC, inbox)
    link.start()
    assert link.connected.wait(DEADLINE)
    inbox.ready(publisher)
    publisher(TOPIC, b"first")
    inbox.wait_for(b"first")
    for n, bad in enumerate((b"boom-recursion", b"boom-json", b"boom")):
        publisher(TOPIC, bad)
        publisher(TOPIC, b"after-%d" % n)
        inbox.wait_for(b"after-%d" % n)
    assert link.connected.is_set()
    assert [p for p in inbox.got if p != b"ready"] == [b"first", b"after-0", b"after-1", b"after-2"]


def test_failing_connect_hook_and_will_do_not_stop_the_link(mqtt_broker: Any, links: list[MqttLink],
                                                           publisher: Callable[[str, bytes], None]) -> None:
    calls = {"will": 0, "hook": 0}

    def will() -> tuple[str, bytes]:
        calls["will"] += 1
        raise RecursionError("will builder failed")

    def hook() -> None:
        calls["hook"] += 1
        raise RuntimeError("hook failed")

    inbox = Inbox()
    link = _link(links, mqtt_broker, "link-hooks", will=will, on_connected=hook)
    link.subscribe(TOPIC, inbox)
    link.start()
    assert link.connected.wait(DEADLINE)
    inbox.ready(publisher)
    publisher(TOPIC, b"still-listening")
    inbox.wait_for(b"still-listening")
    assert calls["will"] >= 1 and calls["hook"] == 1


def test_renew_session_rearms_the_will_and_resubscribes(mqtt_broker: Any, links: list[MqttLink],
                                                       publisher: Callable[[str, bytes], None]) -> None:
    wills: list[int] = []
    connects = threading.Semaphore(0)

    def will() -> tuple[str, bytes]:
        wills.append(len(wills) + 1)
        return "nodes/link-renew/status", b"offline-%d" % wills[-1]

    inbox = Inbox()
    link = _link(links, mqtt_broker, "link-renew", will=will, on_connected=connects.release)
    link.subscribe(TOPIC, inbox)
    link.start()
    assert connects.acquire(timeout=DEADLINE)
    armed_before = len(wills)
    assert link.renew_session()
    assert connects.acquire(timeout=DEADLINE), "the connect hook did not run for the new session"
    assert len(wills) > armed_before, "the new session did not arm a new will"
    poll_until(link.connected.is_set, DEADLINE, what="renewed session connected")
    inbox.ready(publisher, b"after-renew")
    link.stop()
    assert not link.renew_session(), "a stopped link must stay stopped"
    assert not link.connected.is_set()
