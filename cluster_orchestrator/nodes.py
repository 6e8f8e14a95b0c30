"""Node registry: registration (idempotent by name), telemetry and status ingest, liveness sweep.

All node state lives in the store; this class serialises read-modify-write of node
documents (MQTT thread, REST threads and the liveness sweep all touch them) and reports
online/offline transitions to its caller, which decides what they mean for deployments.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import uuid
from collections.abc import Mapping
from typing import Any

from cluster_orchestrator.liveness import accepts_status, is_online
from cluster_orchestrator.store import ClusterStateStore, Doc
from treeline_common.clock import Clock
from treeline_common.errors import InvalidInput, NotFound
from treeline_common.messages import NodeStatus, NodeTelemetry

log = logging.getLogger(__name__)

_REQUIRED: dict[str, tuple[type, ...]] = {
    "name": (str,),
    "profile": (str,),
    "arch": (str,),
    "cpu_count": (int,),
    "memory_limit_mb": (int,),
    "speed_factor": (int, float),
    "data_endpoint": (str,),
}
_OPTIONAL: dict[str, tuple[type, ...]] = {
    "emulated": (bool,),
    "accelerators": (list,),
    "labels": (list,),
    "device_class": (str,),
}
# Declared device figures (see treeline_common.profiles): the energy model and link costs.
_DEVICE_FIGURES = ("power_w", "radio_nj_per_byte", "uplink_mbps", "link_rtt_ms")


def validate_registration(body: Mapping[str, Any]) -> dict[str, Any]:
    """The registration fields of ``body``, or InvalidInput listing every bad field by name."""
    details: list[dict[str, str]] = []
    for name, types in _REQUIRED.items():
        value = body.get(name)
        if value is None:
            details.append({"path": name, "message": "is required"})
        elif isinstance(value, bool) or not isinstance(value, types):
            details.append({"path": name, "message": f"must be {' or '.join(t.__name__ for t in types)}"})
    for name, types in _OPTIONAL.items():
        value = body.get(name)
        if value is not None and not isinstance(value, types):
            details.append({"path": name, "message": f"must be {types[0].__name__}"})
    if isinstance(body.get("name"), str) and not body["name"].strip():
        details.append({"path": "name", "message": "must not be empty"})
    if isinstance(body.get("cpu_count"), int) and not isinstance(body["cpu_count"], bool) and body["cpu_count"] < 1:
        details.append({"path": "cpu_count", "message": "must be >= 1"})
    if isinstance(body.get("memory_limit_mb"), int) and body["memory_limit_mb"] < 0:
        details.append({"path": "memory_limit_mb", "message": "must be >= 0"})
    speed = body.get("speed_factor")
    if isinstance(speed, (int, float)) and not isinstance(speed, bool) and speed <= 0:
        details.append({"path": "speed_factor", "message": "must be > 0"})
    endpoint = body.get("data_endpoint")
    if isinstance(endpoint, str) and "://" not in endpoint:
        details.append({"path": "data_endpoint", "message": "must be a URL like tcp://host:port"})
    for name in _DEVICE_FIGURES:
        value = body.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0):
            details.append({"path": name, "message": "must be a number >= 0"})
    if body.get("uplink_mbps") == 0:
        details.append({"path": "uplink_mbps", "message": "must be > 0"})
    battery = body.get("battery")
    if battery is not None and not (isinstance(battery, Mapping) and isinstance(battery.get("percent"), (int, float))):
        details.append({"path": "battery", "message": "must be null or {percent, charging}"})
    if details:
        raise InvalidInput("invalid node registration", details)
    fields = {k: body[k] for k in (*_REQUIRED, *_OPTIONAL, *_DEVICE_FIGURES) if body.get(k) is not None}
    fields["battery"] = dict(battery) if battery is not None else None
    fields.setdefault("emulated", False)
    fields.setdefault("accelerators", [])
    fields.setdefault("labels", [])
    return fields


class NodeRegistry:
    """Node documents in the store plus the rules that change them."""

    def __init__(self, store: ClusterStateStore, clock: Clock, heartbeat_timeout: float) -> None:
        self._store = store
        self._clock = clock
        self.heartbeat_timeout = heartbeat_timeout
        self._lock = threading.RLock()

    def register(self, body: Mapping[str, Any]) -> tuple[Doc, bool]:
        """Register or re-register (same name -> same node_id); returns (doc, created).

        Re-registration means a new life of the node: status tracking restarts, so a
        retained ``offline`` from its previous life cannot mark it offline again.
        """
        fields = validate_registration(body)
        now = self._clock.now()
        with self._lock:
            existing = self._store.find_node_by_name(fields["name"])
            doc: Doc = dict(existing) if existing else {"node_id": f"node-{uuid.uuid4().hex[:12]}",
                                                        "telemetry": None, "last_seen": None}
            doc.update(fields)
            doc.update({"registered_at": now, "status_state": None, "status_seq": None, "online": False})
            self._store.put_node(doc)
        log.info("node %s (%s) %s", doc["name"], doc["node_id"], "re-registered" if existing else "registered")
        return doc, existing is None

    def get(self, node_id: str) -> Doc:
        doc = self._store.get_node(node_id)
        if doc is None:
            raise NotFound(f"node {node_id} is not registered")
        return doc

    def list(self) -> list[Doc]:
        """All nodes with ``online`` evaluated at the current time."""
        now = self._clock.now()
        nodes = self._store.list_nodes()
        for doc in nodes:
            doc["online"] = is_online(doc, now, self.heartbeat_timeout)
        return nodes

    def _update(self, node_id: str, change: Any) -> tuple[bool, bool] | None:
        """Apply ``change(doc)`` under the lock; return (was_online, is_online) or None if unknown."""
        with self._lock:
            doc = self._store.get_node(node_id)
            if doc is None:
                log.debug("message from unregistered node %s dropped", node_id)
                return None
            was = bool(doc.get("online"))
            if change(doc) is False:
                return was, was
            now_online = is_online(doc, self._clock.now(), self.heartbeat_timeout)
            doc["online"] = now_online
            self._store.put_node(doc)
            return was, now_online

    def on_telemetry(self, node_id: str, telemetry: NodeTelemetry) -> tuple[bool, bool] | None:
        """Store the latest telemetry and mark the node seen now (cluster clock, not the node's)."""
        def change(doc: Doc) -> None:
            doc["telemetry"] = dataclasses.asdict(telemetry)
            doc["last_seen"] = self._clock.now()
        return self._update(node_id, change)

    def on_status(self, node_id: str, status: NodeStatus) -> tuple[bool, bool] | None:
        """Accept a birth (online) or last will (offline) unless it is a stale retained one."""
        def change(doc: Doc) -> bool:
            if not accepts_status(doc, status):
                log.debug("stale status %s seq=%s from %s ignored", status.state, status.seq, node_id)
                return False
            doc["status_state"] = status.state
            doc["status_seq"] = status.seq
            if status.state == "online":
                doc["last_seen"] = self._clock.now()
            return True
        return self._update(node_id, change)

    def sweep(self) -> list[tuple[str, bool]]:
        """Re-evaluate liveness of every node; persist and return the (node_id, online) that flipped."""
        flipped = []
        now = self._clock.now()
        with self._lock:
            for doc in self._store.list_nodes():
                online = is_online(doc, now, self.heartbeat_timeout)
                if online != bool(doc.get("online")):
                    doc["online"] = online
                    self._store.put_node(doc)
                    flipped.append((doc["node_id"], online))
        return flipped

    def grant_startup_grace(self) -> None:
        """After a restart, count nodes that were online as just seen, so the time the cluster
        itself was down is not mistaken for missed heartbeats; dead nodes still time out."""
        now = self._clock.now()
        with self._lock:
            for doc in self._store.list_nodes():
                if doc.get("online"):
                    doc["last_seen"] = max(float(doc.get("last_seen") or 0.0), now)
                    self._store.put_node(doc)
