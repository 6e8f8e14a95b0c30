"""The MQTT adapter: the one module of the node engine that imports paho-mqtt.

:class:`MqttLink` hides paho's callback API behind the needs of the daemon: a last will
that is (re)armed before every connection attempt, a hook run on every (re)connect (to
publish the birth and resubscribe — a broker that restarted has forgotten both), topic
handlers, and :meth:`MqttLink.renew_session` to replace the session on demand (a new will
needs a new connection). paho's network thread (``loop_start``) reconnects on its own with
a bounded backoff; handlers run on that thread, so they MUST return quickly and hand long
work to a worker.

Failure contract: nothing a handler or hook raises can reach paho. paho-mqtt 2.x re-raises
callback exceptions, which kills its network thread while ``is_connected()`` still reads
True (a silently deaf node), so the client runs with ``suppress_exceptions = True`` AND
every callback we register is wrapped in a catch-all that logs; either alone would do,
both together survive a future paho changing one of them.

Identity: ``username``/``password`` (the node's own MQTT credentials from its registration
answer) are sent on every connect; ``tls`` makes the session MQTT over TLS, verifying the broker
against ``tls.ca`` (the system's CAs when empty), with ``tls.cert``/``tls.key`` for mutual TLS.
A refused login is logged and retried with paho's backoff (a broker reloading its password
file may refuse a brand-new password for a moment).
"""

from __future__ import annotations

import logging
import ssl
import threading
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt

from treeline_common.mqtt_acl import TlsFiles

log = logging.getLogger(__name__)

Handler = Callable[[bytes], None]


def _guarded(name: str, callback: Callable[..., None]) -> Callable[..., None]:
    """``callback`` wrapped so that no exception escapes into paho's network thread."""

    def call(*args: Any) -> None:
        try:
            callback(*args)
        except Exception:
            log.exception("MQTT %s callback failed", name)

    return call


class MqttLink:
    """One MQTT session to a broker. The constructor does no I/O; :meth:`start` connects.

    Thread-safety: :meth:`publish` and :meth:`subscribe` may be called from any thread;
    :meth:`renew_session` and :meth:`stop` are serialized with each other and MUST NOT be
    called from a handler (they join paho's network thread, the one running handlers).
    """

    def __init__(
        self,
        client_id: str,
        host: str,
        port: int,
        *,
        will: Callable[[], tuple[str, bytes]] | None = None,
        on_connected: Callable[[], None] | None = None,
        keepalive: int = 10,
        username: str | None = None,
        password: str | None = None,
        tls: TlsFiles | None = None,
    ) -> None:
        self._host = host
        self._port = port
        self._keepalive = keepalive
        self._will = will
        self._on_connected = on_connected
        self._handlers: dict[str, Handler] = {}
        self._connected = threading.Event()
        self._session_lock = threading.Lock()  # renew_session vs stop
        self._stopping = False  # a disconnect we asked for (log it quietly)
        self._closed = False
        self._client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True)
        self._client.suppress_exceptions = True
        if username:
            self._client.username_pw_set(username, password or None)
        if tls is not None:
            self._client.tls_set(ca_certs=tls.ca or None, certfile=tls.cert or None, keyfile=tls.key or None,
                                 cert_reqs=ssl.CERT_REQUIRED)
        self._client.reconnect_delay_set(min_delay=1, max_delay=5)
        self._client.on_pre_connect = _guarded("pre-connect", self._handle_pre_connect)
        self._client.on_connect = _guarded("connect", self._handle_connect)
        self._client.on_disconnect = _guarded("disconnect", self._handle_disconnect)
        self._client.on_message = _guarded("message", self._handle_message)

    @property
    def connected(self) -> threading.Event:
        return self._connected

    def subscribe(self, topic: str, handler: Handler) -> None:
        """Route ``topic`` to ``handler``; (re)subscribed on every connect."""
        self._handlers[topic] = handler
        if self._connected.is_set():
            self._client.subscribe(topic, qos=1)

    def start(self) -> None:
        """Connect in the background; paho keeps retrying until the broker answers.

        The will is armed by the pre-connect hook before every attempt (this one included).
        """
        self._client.connect_async(self._host, self._port, keepalive=self._keepalive)
        self._client.loop_start()

    def renew_session(self) -> bool:
        """Close the session cleanly and open a new one; False if the link is stopped.

        The clean DISCONNECT discards the old will (the broker does not publish it); the
        new connection arms a fresh will (pre-connect hook), resubscribes and runs the
        ``on_connected`` hook, exactly as a first connect does. Messages published while
        the session is down are not guaranteed to be delivered.
        """
        with self._session_lock:
            if self._closed:
                return False
            log.info("renewing the MQTT session to %s:%s", self._host, self._port)
            self._stopping = True
            self._client.disconnect()
            self._client.loop_stop()
            self._connected.clear()
            self._stopping = False
            self._client.connect_async(self._host, self._port, keepalive=self._keepalive)
            self._client.loop_start()
            return True

    def publish(self, topic: str, payload: bytes, *, qos: int = 0, retain: bool = False) -> Any:
        """Queue a message; returns paho's MQTTMessageInfo (``wait_for_publish`` on it)."""
        return self._client.publish(topic, payload, qos=qos, retain=retain)

    def publish_and_wait(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False,
                         timeout: float = 1.0) -> bool:
        """Publish and wait up to ``timeout`` for the broker's acknowledgement."""
        if not self._connected.is_set():
            return False
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        try:
            info.wait_for_publish(timeout)
        except (RuntimeError, ValueError) as exc:
            log.warning("publish on %s failed: %s", topic, exc)
            return False
        return bool(info.is_published())

    def stop(self) -> None:
        """Disconnect cleanly (the broker does NOT send the will) and stop the network thread.

        Final: a later :meth:`renew_session` does nothing.
        """
        with self._session_lock:
            self._closed = True
            self._stopping = True
            self._client.disconnect()
            self._client.loop_stop()
            self._connected.clear()

    # ------------------------------------------------------------------ paho callbacks

    def _handle_pre_connect(self, client: mqtt.Client, userdata: Any) -> None:
        if self._will is not None:
            topic, payload = self._will()
            client.will_set(topic, payload, qos=1, retain=True)

    def _handle_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any,
                        properties: Any) -> None:
        if reason_code.is_failure:
            log.warning("MQTT connect to %s:%s refused: %s", self._host, self._port, reason_code)
            return
        log.info("MQTT connected to %s:%s", self._host, self._port)
        for topic in list(self._handlers):
            client.subscribe(topic, qos=1)
        self._connected.set()
        if self._on_connected is not None:
            try:
                self._on_connected()
            except Exception:
                log.exception("on_connected hook failed")

    def _handle_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any,
                           properties: Any) -> None:
        self._connected.clear()
        if self._stopping:
            log.info("MQTT disconnected from %s:%s", self._host, self._port)
            return
        log.warning("MQTT disconnected from %s:%s (%s); reconnecting", self._host, self._port, reason_code)

    def _handle_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        handler = self._handlers.get(message.topic)
        if handler is None:
            return
        try:
            handler(bytes(message.payload))
        except Exception:
            log.exception("handler for %s failed", message.topic)
