"""The fleet's MQTT sessions: one per virtual node, or a few carrying many nodes' topics.

Modes (:data:`PER_NODE`, :data:`MULTIPLEXED`):

- ``per-node``: every virtual node has its own MQTT session, logged in with the credentials
  its registration answer gave (as a real node engine), with a retained last will
  ``offline`` whose seq grows with every connection attempt, and a retained birth ``online``
  with that seq on every (re)connect. The broker carries 1,000 sessions and publishes 1,000
  wills when the simulator dies: this is what a real fleet costs the broker and the cluster.
- ``multiplexed``: ``connections`` sessions, each carrying a share of the nodes (their control
  subscriptions, births and telemetry). NO per-node last will (a session has one will and it
  cannot speak for many nodes): when the simulator dies the cluster finds its nodes dead by
  missed heartbeats only (held as mass silence, see ``cluster_orchestrator.nodes``). With a
  broker enforcing the ACL, only the cluster's own identity may publish under every node's
  prefix, so this mode needs ``username``/``password`` of that identity (or an open broker).
  It measures the cluster's message handling without the broker's per-connection cost.

Every session is driven by a :class:`~node_engine.simulator.network.NetworkShard` (a few
threads for all sessions). Incoming commands go to ``handler(node, suffix, payload)`` on the
shard's thread: it MUST return quickly.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import paho.mqtt.client as mqtt

from node_engine.mqtt_link import _guarded  # the node engine's own guard: nothing reaches paho
from node_engine.simulator.network import NetworkShard, Session
from node_engine.simulator.virtual_node import VirtualNode
from treeline_common import topics
from treeline_common.messages import encode

log = logging.getLogger(__name__)

PER_NODE, MULTIPLEXED = "per-node", "multiplexed"
MODES = (PER_NODE, MULTIPLEXED)

Handler = Callable[[VirtualNode, str, bytes], None]  # (node, topic suffix after nodes/<id>/, payload)


class FleetTransport:
    """All MQTT sessions of a fleet (see the module docstring). Build, :meth:`start`, then
    :meth:`publish` from any thread; :meth:`stop` leaves cleanly, :meth:`kill` crashes."""

    def __init__(self, nodes: Sequence[VirtualNode], host: str, port: int, handler: Handler, *,
                 mode: str = PER_NODE, network_threads: int = 4, connections: int = 4, keepalive: int = 30,
                 username: str | None = None, password: str | None = None,
                 now: Callable[[], float] = time.time) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; known: {', '.join(MODES)}")
        self.mode = mode
        self._host, self._port = host, port
        self._handler = handler
        self._keepalive = keepalive
        self._now = now
        self._shards = [NetworkShard(f"{i}") for i in range(max(1, network_threads))]
        self._lock = threading.Condition()
        self._connected: set[int] = set()  # id() of connected sessions
        self._client_of: dict[str, mqtt.Client] = {}
        if mode == PER_NODE:
            groups = [[n] for n in nodes]
        else:
            count = max(1, min(connections, len(nodes)))
            groups = [list(nodes[i::count]) for i in range(count)]
        self._groups = [g for g in groups if g]
        self._sessions = [self._session(i, group, username, password) for i, group in enumerate(self._groups)]

    # ---------------------------------------------------------------- building

    def _session(self, index: int, group: list[VirtualNode], username: str | None,
                 password: str | None) -> Session:
        per_node = self.mode == PER_NODE
        first = group[0].node_id
        name = f"treeline-sim-{first}" if per_node else f"treeline-sim-mux-{index}-{first}"
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=name, clean_session=True)
        client.suppress_exceptions = True
        user, secret = (group[0].mqtt_username, group[0].mqtt_password) if per_node else (username, password)
        if user:
            client.username_pw_set(user, secret or None)
        client.max_inflight_messages_set(100)
        session = Session(client, self._host, self._port, name=name, keepalive=self._keepalive)
        by_id = {n.node_id: n for n in group}
        for node in group:
            self._client_of[node.node_id] = client

        def before_connect(c: mqtt.Client) -> None:
            if per_node:  # a new will, with a new seq, for every attempt
                will = group[0].next_will(self._now())
                c.will_set(topics.status(will.node_id), encode(will), qos=1, retain=True)
            else:
                for node in group:
                    node.next_will(self._now())  # only to advance the seq: no will is armed

        def on_connect(c: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any = None) -> None:
            if reason.is_failure:
                log.warning("%s: connect refused: %s", name, reason)
                return
            c.subscribe([(f"{topics.PREFIX}/{n.node_id}/control/#", 1) for n in group])
            for node in group:
                c.publish(topics.status(node.node_id), encode(node.birth(self._now())), qos=1, retain=True)
            with self._lock:
                self._connected.add(id(session))
                self._lock.notify_all()

        def on_disconnect(_c: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any = None) -> None:
            with self._lock:
                self._connected.discard(id(session))
            if not session.stopped:
                log.warning("%s: disconnected (%s)", name, reason)

        def on_message(_c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
            parts = msg.topic.split("/", 2)
            node = by_id.get(parts[1]) if len(parts) == 3 else None
            if node is not None:
                self._handler(node, parts[2], bytes(msg.payload))

        session.before_connect = _guarded("pre-connect", before_connect)
        client.on_connect = _guarded("connect", on_connect)
        client.on_disconnect = _guarded("disconnect", on_disconnect)
        client.on_message = _guarded("message", on_message)
        return session

    # ---------------------------------------------------------------- running

    @property
    def session_count(self) -> int:
        return len(self._sessions)

    def connected_count(self) -> int:
        with self._lock:
            return len(self._connected)

    def start(self) -> None:
        """Start the network threads and hand them the sessions (they connect in the background)."""
        for shard in self._shards:
            shard.start()
        for i, session in enumerate(self._sessions):
            self._shards[i % len(self._shards)].add(session)

    def wait_connected(self, timeout: float) -> bool:
        """Whether every session was connected (CONNACK) within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while len(self._connected) < len(self._sessions):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._lock.wait(min(remaining, 0.5))
        return True

    def publish(self, node: VirtualNode, topic: str, payload: bytes, *, qos: int = 0,
                retain: bool = False) -> mqtt.MQTTMessageInfo | None:
        """Queue one message on the session carrying ``node`` (any thread); None when that
        session is down (the message is dropped), else paho's info (``wait_for_publish``)."""
        client = self._client_of.get(node.node_id)
        if client is not None and client.is_connected():
            return client.publish(topic, payload, qos=qos, retain=retain)
        return None

    def stop(self, timeout: float = 5.0) -> None:
        """Leave cleanly: DISCONNECT every session (the broker discards the wills), end the threads.

        Wait for the acknowledgements of QoS 1 messages first: a socket closed with unread data
        (a PUBACK still in its buffer) is reset, and a reset makes the broker drop what it had
        not read yet, the last messages included."""
        per_shard = timeout / max(1, len(self._shards))
        for shard in self._shards:
            shard.disconnect_all(per_shard)
        for shard in self._shards:
            shard.stop()

    def kill(self) -> None:
        """Crash: reset every connection without DISCONNECT (the broker publishes every will)."""
        for shard in self._shards:
            shard.kill()
        with self._lock:
            self._connected.clear()
