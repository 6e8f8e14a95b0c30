"""Node registry: registration (idempotent by name), telemetry and status ingest, liveness sweep.

All node state lives in the store; this class serialises read-modify-write of node
documents (MQTT thread, REST threads and the liveness sweep all touch them) and reports
online/offline transitions to its caller, which decides what they mean for deployments.
The join tokens a node must show to register live in :mod:`.join_tokens` (re-exported here).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import threading
import uuid
from collections.abc import Mapping
from typing import Any

from cluster_orchestrator.join_tokens import (
    JOIN_PREFIX,
    JOIN_TOKEN_ENV,
    JOIN_TOKENS_KEY,
    MIN_JOIN_TOKEN_CHARS,
    JoinTokens,
    new_join_token,
    public_join_token,
)
from cluster_orchestrator.liveness import DepartureHold, accepts_status, is_online
from cluster_orchestrator.store import ClusterStateStore, Doc
from treeline_common.clock import Clock
from treeline_common.errors import Conflict, InvalidInput, NotFound
from treeline_common.messages import NodeStatus, NodeTelemetry

# the join-token names stay importable from here (stack, api, app and tests import them so)
__all__ = ["JOIN_PREFIX", "JOIN_TOKENS_KEY", "JOIN_TOKEN_ENV", "MIN_JOIN_TOKEN_CHARS", "JoinTokens",
           "NodeRegistry", "new_join_token", "public_join_token", "validate_registration"]

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
    "instance_id": (str,),
    "data_curve_endpoint": (str,),
    "curve_public_key": (str,),
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
    cpu_count = body.get("cpu_count")
    if isinstance(cpu_count, int) and not isinstance(cpu_count, bool) and cpu_count < 1:
        details.append({"path": "cpu_count", "message": "must be >= 1"})
    if isinstance(body.get("memory_limit_mb"), int) and body["memory_limit_mb"] < 0:
        details.append({"path": "memory_limit_mb", "message": "must be >= 0"})
    speed = body.get("speed_factor")
    if isinstance(speed, (int, float)) and not isinstance(speed, bool) and speed <= 0:
        details.append({"path": "speed_factor", "message": "must be > 0"})
    for name in ("data_endpoint", "data_curve_endpoint"):
        endpoint = body.get(name)
        if isinstance(endpoint, str) and endpoint and "://" not in endpoint:
            details.append({"path": name, "message": "must be a URL like tcp://host:port"})
    key = body.get("curve_public_key")
    if isinstance(key, str) and key and len(key) != 40:
        details.append({"path": "curve_public_key", "message": "must be a 40-character Z85 CURVE public key"})
    for name in _DEVICE_FIGURES:
        value = body.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or value < 0):
            details.append({"path": name, "message": "must be a number >= 0"})
    if body.get("uplink_mbps") == 0:
        details.append({"path": "uplink_mbps", "message": "must be > 0"})
    battery = body.get("battery")
    if battery is not None and not (isinstance(battery, Mapping)
                                    and isinstance(battery.get("percent"), (int, float))):
        details.append({"path": "battery", "message": "must be null or {percent, charging}"})
    if details:
        raise InvalidInput("invalid node registration", details)
    fields = {k: body[k] for k in (*_REQUIRED, *_OPTIONAL, *_DEVICE_FIGURES) if body.get(k) is not None}
    fields["battery"] = dict(battery) if battery is not None else None
    fields.setdefault("emulated", False)
    fields.setdefault("accelerators", [])
    fields.setdefault("labels", [])
    return fields


def _held_by_another(existing: Mapping[str, Any], fields: Mapping[str, Any]) -> bool:
    """Whether a live node (online, not yet declared dead) with another process identity has the name."""
    held, asking = existing.get("instance_id"), fields.get("instance_id")
    return bool(existing.get("online")) and bool(held) and bool(asking) and held != asking


class NodeRegistry:
    """Node documents plus the rules that change them.

    The documents live in memory and in the store: registrations and status changes are
    written through at once; telemetry (many messages a second in a large cluster, and
    observed state that the next message replaces anyway) is kept in memory and flushed
    by :meth:`flush` (the liveness sweep calls it every ``flush_interval``).

    Failure detection (:meth:`sweep`) tells a dead node from a dead broker: while the
    cluster's own broker connection is down nobody is declared dead by silence, and when
    at least two nodes time out while more than half of the online nodes have been quiet for
    half the timeout (heartbeats are spread over the interval: a fleet silenced at once
    crosses the timeout over a whole interval, not in one sweep), the silence is taken as a
    broker or network fault and held for ``mass_silence_hold`` heartbeat timeouts before
    anyone is declared dead. Last wills still count at once.

    Departures (nodes flipping offline, by will or silence) feed a
    :class:`~.liveness.DepartureHold`: :meth:`plans_held_until` tells the reconcile loop when
    re-plans may start, so a mass departure is re-planned once, on its final state.

    Copies: documents are replaced, never changed in place, once handed out (copy on write),
    so :meth:`list_nodes` returns shallow copies that stay consistent; their nested values
    (telemetry, lists) are shared and MUST NOT be mutated by callers.
    """

    def __init__(self, store: ClusterStateStore, clock: Clock, heartbeat_timeout: float,
                 mass_silence_hold: float = 3.0, flush_interval: float = 5.0) -> None:
        self._store = store
        self._clock = clock
        self.heartbeat_timeout = heartbeat_timeout
        self._hold = mass_silence_hold * heartbeat_timeout
        self._flush_interval = flush_interval
        self._lock = threading.RLock()
        self._docs: dict[str, Doc] | None = None  # loaded on first use (no I/O in the constructor)
        self._dirty: set[str] = set()
        self._last_flush = 0.0
        self._silence_since: float | None = None
        self._departures = DepartureHold()
        self._by_name: dict[str, str] = {}  # name -> node_id
        # nodes heard from by this process: a node only known from the store (a previous run of
        # the cluster) holds its name by nothing but the start-up grace, so a new process may take it
        self._heard: set[str] = set()

    def _all(self) -> dict[str, Doc]:
        if self._docs is None:
            self._docs = {d["node_id"]: d for d in self._store.list_nodes()}
            self._by_name = {d["name"]: d["node_id"] for d in self._docs.values()}
        return self._docs

    def _save(self, doc: Doc) -> None:
        self._store.put_node(doc)
        self._all()[doc["node_id"]] = doc
        self._by_name[doc["name"]] = doc["node_id"]
        self._dirty.discard(doc["node_id"])

    def register(self, body: Mapping[str, Any]) -> tuple[Doc, bool]:
        """Register or re-register (same name -> same node_id); returns (doc, created).

        Re-registration means a new life of the node: status tracking restarts, so a
        retained ``offline`` from its previous life cannot mark it offline again.
        """
        fields = validate_registration(body)
        now = self._clock.now()
        with self._lock:
            docs = self._all()
            existing = docs.get(self._by_name.get(fields["name"], ""))
            heard = existing is not None and existing["node_id"] in self._heard
            if existing is not None and heard and _held_by_another(existing, fields):
                raise Conflict(
                    f"node name {fields['name']!r} is held by another live node engine; stop it or start "
                    f"this one with another --name",
                    [{"path": "name", "message": "held by a live node with another instance_id"}])
            doc: Doc = copy.deepcopy(existing) if existing else {
                "node_id": f"node-{uuid.uuid4().hex[:12]}", "telemetry": None, "last_seen": None}
            doc.update(fields)
            # a new life: status tracking restarts. A node that was online stays so (it has just
            # called us), so its restart is repaired by re-sending its stages, not by a re-plan;
            # one that was offline comes online with its birth, once it listens for commands.
            alive = bool(existing and existing.get("online"))
            doc.update({"registered_at": now, "status_state": None, "status_seq": None, "online": alive})
            if alive:
                doc["last_seen"] = now
            self._save(doc)
            self._heard.add(doc["node_id"])
        log.info("node %s (%s) %s", doc["name"], doc["node_id"],
                 "re-registered" if existing else "registered")
        return copy.deepcopy(doc), existing is None

    def get(self, node_id: str) -> Doc:
        with self._lock:
            doc = self._all().get(node_id)
            if doc is None:
                raise NotFound(f"node {node_id} is not registered")
            return copy.deepcopy(doc)

    def list_nodes(self) -> list[Doc]:
        """All nodes (shallow copies, by name: see the class docstring) with ``online`` as last
        decided by the sweep and messages. Cheap enough for every reconcile pass at 1,000 nodes."""
        with self._lock:
            return [dict(d) for d in sorted(self._all().values(), key=lambda d: d["name"])]

    def plans_held_until(self, now: float) -> float | None:
        """When re-plans may start after the latest departures (None: now); see DepartureHold."""
        with self._lock:
            return self._departures.held_until(now)

    def _departed(self, now: float) -> None:
        """Record one online -> offline flip (under the lock, after the doc was changed)."""
        online = sum(1 for d in self._all().values() if d.get("online"))
        self._departures.departed(now, online + 1)

    def _update(self, node_id: str, change: Any, persist: bool) -> tuple[bool, bool] | None:
        """Apply ``change(doc)`` under the lock; return (was_online, is_online) or None if unknown."""
        with self._lock:
            docs = self._all()
            current = docs.get(node_id)
            if current is None:
                log.debug("message from unregistered node %s dropped", node_id)
                return None
            was = bool(current.get("online"))
            doc = dict(current)  # copy on write: copies handed out keep the old one
            if change(doc) is False:
                return was, was
            now = self._clock.now()
            now_online = is_online(doc, now, self.heartbeat_timeout)
            # silence alone never flips a node here: only the sweep judges heartbeats
            doc["online"] = now_online if (now_online or doc.get("status_state") == "offline") else was
            if persist or doc["online"] != was:
                self._save(doc)
            else:
                docs[node_id] = doc
                self._dirty.add(node_id)
            if was and not doc["online"]:
                self._departed(now)
            return was, bool(doc["online"])

    def on_telemetry(self, node_id: str, telemetry: NodeTelemetry) -> tuple[bool, bool] | None:
        """Store the latest telemetry and mark the node seen now (cluster clock, not the node's).

        Telemetry from a birth newer than an ``offline`` the cluster holds proves the node
        alive: the offline was a stale or foreign status, and the node is online again.
        Measured links (``telemetry.links``) are kept from the last telemetry that had them
        when a newer one carries none (``None``); an empty list clears them.
        """
        self._heard.add(node_id)

        def change(doc: Doc) -> None:
            held = (doc.get("telemetry") or {}).get("links")
            doc["telemetry"] = dataclasses.asdict(telemetry)
            if telemetry.links is None and held:  # the latest measured links stay until new ones come
                doc["telemetry"]["links"] = held
            doc["last_seen"] = self._clock.now()
            seen = doc.get("status_seq")
            if doc.get("status_state") == "offline" and seen is not None and telemetry.seq > int(seen):
                log.info("node %s: telemetry of birth %s overrides offline seq %s",
                         node_id, telemetry.seq, seen)
                doc["status_state"] = "online"
                doc["status_seq"] = telemetry.seq
        return self._update(node_id, change, persist=False)

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
        return self._update(node_id, change, persist=True)

    def sweep(self, bus_connected: bool = True) -> list[tuple[str, bool]]:
        """Re-evaluate liveness; persist and return the (node_id, online) that flipped.

        Silence is not judged while ``bus_connected`` is False, and mass silence is held
        (see the class docstring). Telemetry is flushed to the store every flush interval.
        """
        now = self._clock.now()
        flipped: list[tuple[str, bool]] = []
        with self._lock:
            docs = self._all()
            verdicts = {nid: is_online(d, now, self.heartbeat_timeout) for nid, d in docs.items()}
            silent = [nid for nid, d in docs.items() if d.get("online") and not verdicts[nid]
                      and d.get("status_state") != "offline"]
            online_before = sum(1 for d in docs.values() if d.get("online"))
            # heartbeats are spread over the interval, so a fleet that fell silent at once crosses
            # the timeout over a whole interval: count who is quiet for half the timeout already
            quiet = sum(1 for d in docs.values() if d.get("online") and d.get("status_state") != "offline"
                        and not is_online(d, now, self.heartbeat_timeout / 2))
            hold = not bus_connected or (len(silent) >= 2 and quiet * 2 > online_before)
            if hold and silent:
                if self._silence_since is None:
                    self._silence_since = now
                    log.warning("%d of %d online nodes silent at once%s: holding them online", len(silent),
                                online_before, "" if bus_connected else " while the broker is unreachable")
                if bus_connected and now - self._silence_since >= self._hold:
                    hold = False
            elif not silent:
                self._silence_since = None
            for node_id, current in list(docs.items()):
                online = verdicts[node_id]
                if online == bool(current.get("online")) or (hold and node_id in silent):
                    continue
                self._save(dict(current, online=online))
                flipped.append((node_id, online))
                if not online:
                    self._departed(now)
            if now - self._last_flush >= self._flush_interval:
                self.flush()
        return flipped

    def flush(self) -> None:
        """Write the telemetry kept in memory to the store."""
        with self._lock:
            for node_id in sorted(self._dirty):
                doc = self._all().get(node_id)
                if doc is not None:
                    self._store.put_node(doc)
            self._dirty.clear()
            self._last_flush = self._clock.now()

    def grant_grace(self) -> None:
        """Count nodes that were online as just seen: after a cluster restart or a broker
        outage, the time nobody could hear them is not taken for missed heartbeats (dead nodes
        still time out a heartbeat window later)."""
        now = self._clock.now()
        with self._lock:
            docs = self._all()
            for node_id, doc in list(docs.items()):
                if doc.get("online"):
                    docs[node_id] = dict(doc, last_seen=max(float(doc.get("last_seen") or 0.0), now))
                    self._dirty.add(node_id)
            self._silence_since = None
