"""The cluster's MQTT edge: the only module of the cluster orchestrator that imports paho.

It subscribes to every node's information / status / job / jobs/resources topic, decodes
payloads with :mod:`treeline_common.messages` (a payload that does not decode is logged
and dropped, never fatal) and hands typed messages to a :class:`BusHandler`. Commands go
out with QoS 1. paho's network loop reconnects by itself; subscriptions are renewed in
``on_connect`` so a broker restart does not leave the cluster deaf.

Identity: with ``username``/``password`` the cluster logs in as its MQTT user (the one the ACL
lets read every node topic and publish the control topics, :mod:`treeline_common.mqtt_acl`);
with ``tls`` it connects over TLS, verifying the broker against ``tls.ca`` (the system's CAs
when empty) and presenting ``tls.cert``/``tls.key`` when given.
"""

from __future__ import annotations

import contextlib
import logging
import ssl
import threading
import time
import uuid
from typing import Any, Protocol
from urllib.parse import urlparse

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from treeline_common import messages, topics
from treeline_common.messages import NodeStatus, NodeTelemetry, ProfileResult, StageState, StageStats
from treeline_common.mqtt_acl import TlsFiles
from treeline_common.training import TrainReport

log = logging.getLogger(__name__)


class BusHandler(Protocol):
    """What the orchestrator core receives; ``node_id`` comes from the topic."""

    def on_node_status(self, node_id: str, status: NodeStatus) -> None: ...

    def on_telemetry(self, node_id: str, telemetry: NodeTelemetry) -> None: ...

    def on_stage_state(self, node_id: str, state: StageState) -> None: ...

    def on_stage_stats(self, node_id: str, stats: StageStats) -> None: ...

    def on_profile_result(self, node_id: str, result: ProfileResult) -> None: ...

    def on_training_report(self, node_id: str, report: TrainReport) -> None: ...

    # optional: ``on_bus_state(connected: bool)``, called when the broker connection drops or returns


class MessageBus(Protocol):
    """What the core sends through: publish one payload dataclass to one topic."""

    def publish(self, topic: str, message: Any) -> None: ...


def parse_mqtt_url(url: str) -> tuple[str, int]:
    """``mqtt://host:port`` -> (host, port); port 1883 by default."""
    parsed = urlparse(url if "://" in url else f"mqtt://{url}")
    if parsed.scheme not in ("mqtt", "tcp"):
        raise ValueError(f"unsupported MQTT URL scheme {parsed.scheme!r} in {url!r}; use mqtt://host:port")
    return parsed.hostname or "127.0.0.1", parsed.port or 1883


_SUBSCRIPTIONS = (
    (topics.ALL_INFORMATION, NodeTelemetry, "on_telemetry"),
    (topics.ALL_STATUS, NodeStatus, "on_node_status"),
    (topics.ALL_JOB, StageState, "on_stage_state"),
    (topics.ALL_JOB_RESOURCES, StageStats, "on_stage_stats"),
    (topics.ALL_PROFILE_RESULTS, ProfileResult, "on_profile_result"),
    (topics.ALL_TRAINING, TrainReport, "on_training_report"),
)


def _route(topic: str) -> tuple[type, str] | None:
    parts = topic.split("/")
    suffix = "/".join(parts[2:])
    for pattern, cls, method in _SUBSCRIPTIONS:
        if "/".join(pattern.split("/")[2:]) == suffix:
            return cls, method
    return None


def configure_client(client: mqtt.Client, username: str | None = None, password: str | None = None,
                     tls: TlsFiles | None = None) -> None:
    """Credentials and TLS of a paho client (before it connects)."""
    if username:
        client.username_pw_set(username, password or None)
    if tls is not None:
        client.tls_set(ca_certs=tls.ca or None, certfile=tls.cert or None, keyfile=tls.key or None,
                       cert_reqs=ssl.CERT_REQUIRED)


def can_connect(host: str, port: int, username: str, password: str, timeout: float = 2.0,
                tls: TlsFiles | None = None) -> bool:
    """Whether the broker accepts a connection with these credentials now (a throw-away session,
    no will, clean): how the cluster knows a reloaded password file has been taken."""
    result: list[bool] = []
    done = threading.Event()
    client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2,
                         client_id=f"treeline-authcheck-{uuid.uuid4().hex[:8]}", clean_session=True)
    client.suppress_exceptions = True
    configure_client(client, username, password, tls)

    def on_connect(_c: mqtt.Client, _u: Any, _f: Any, reason_code: Any, _p: Any = None) -> None:
        result.append(not reason_code.is_failure)
        done.set()

    client.on_connect = on_connect
    deadline = time.monotonic() + timeout
    try:
        client.connect(host, port, keepalive=5)
        while not done.is_set() and time.monotonic() < deadline:
            client.loop(timeout=0.05)
    except (OSError, ssl.SSLError, ValueError):
        return False
    finally:
        with contextlib.suppress(Exception):  # not connected: nothing to close
            client.disconnect()
    return bool(result and result[0])


class MqttBus:
    """paho client bound to one handler. ``start`` connects in the background (no I/O in __init__)."""

    def __init__(self, url: str, handler: BusHandler, client_id: str | None = None, *,
                 username: str | None = None, password: str | None = None,
                 tls: TlsFiles | None = None) -> None:
        self.host, self.port = parse_mqtt_url(url)
        self.tls = tls
        self._handler = handler
        self._connected = threading.Event()
        self._stopping = False
        self._dropped: dict[str, int] = {}  # messages not handed on, by reason; paho's thread writes
        self._client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=client_id or f"treeline-cluster-{uuid.uuid4().hex[:8]}",
            clean_session=True,
        )
        configure_client(self._client, username, password, tls)
        # paho 2.x re-raises callback exceptions and its network thread dies while
        # is_connected() still reads True: never let that happen (callbacks are wrapped too).
        self._client.suppress_exceptions = True
        self._client.reconnect_delay_set(min_delay=1, max_delay=5)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def dropped(self) -> dict[str, int]:
        """Messages received and not handled, by reason (``unknown_topic``, ``bad_payload``,
        ``handler_error``) since start: a copy, safe from any thread."""
        return self._dropped.copy()

    def _drop(self, reason: str) -> None:
        self._dropped[reason] = self._dropped.get(reason, 0) + 1

    def start(self) -> None:
        """Connect asynchronously; paho's loop thread keeps reconnecting until :meth:`stop`."""
        self._client.connect_async(self.host, self.port, keepalive=10)
        self._client.loop_start()

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    def stop(self) -> None:
        """Disconnect and stop the network loop; idempotent."""
        self._stopping = True
        try:
            self._client.disconnect()
        except Exception:  # already disconnected is fine at shutdown
            log.debug("disconnect failed", exc_info=True)
        self._client.loop_stop()
        self._connected.clear()

    def publish(self, topic: str, message: Any) -> None:
        """Publish a payload dataclass with QoS 1 (paho queues it while reconnecting)."""
        info = self._client.publish(topic, messages.encode(message), qos=1)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            log.warning("publish to %s queued with rc=%s (broker unreachable?)", topic, info.rc)

    # ---------------------------------------------------------------- paho callbacks
    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any,
                    properties: Any = None) -> None:
        if reason_code.is_failure:
            log.warning("MQTT connect to %s:%s refused: %s", self.host, self.port, reason_code)
            return
        client.subscribe([(pattern, 1) for pattern, _, _ in _SUBSCRIPTIONS])
        self._connected.set()
        log.info("MQTT connected to %s:%s, subscribed to node topics", self.host, self.port)
        self._notify_state(True)

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any,
                       properties: Any = None) -> None:
        self._connected.clear()
        if self._stopping:
            log.info("MQTT disconnected (%s)", reason_code)
        else:
            log.warning("MQTT disconnected (%s); reconnecting", reason_code)
        self._notify_state(False)

    def _notify_state(self, connected: bool) -> None:
        hook = getattr(self._handler, "on_bus_state", None)
        if hook is None:
            return
        try:
            hook(connected)
        except Exception:  # never let a handler kill paho's thread
            log.exception("on_bus_state handler failed")

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            self._dispatch(msg)
        except Exception:  # nothing may escape into paho's network thread
            log.exception("message on %s could not be handled", msg.topic)

    def _dispatch(self, msg: mqtt.MQTTMessage) -> None:
        if not msg.payload:
            return  # a cleared retained message
        route = _route(msg.topic)
        if route is None:
            log.debug("ignoring message on %s", msg.topic)
            self._drop("unknown_topic")
            return
        cls, method = route
        try:
            node_id = topics.node_id_of(msg.topic)
            payload: object = messages.decode(cls, bytes(msg.payload))
        except Exception as exc:  # noqa: BLE001 - PayloadError, or anything a decoder raises
            log.warning("dropping bad payload on %s: %s", msg.topic, str(exc)[:300])
            self._drop("bad_payload")
            return
        try:
            getattr(self._handler, method)(node_id, payload)
        except Exception:  # one bad message must not kill paho's loop thread
            log.exception("handler %s failed for %s", method, msg.topic)
            self._drop("handler_error")
