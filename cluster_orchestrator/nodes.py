"""Node registry: registration (idempotent by name), telemetry and status ingest, liveness sweep;
and the join tokens a node must show to register (:class:`JoinTokens`).

All node state lives in the store; this class serialises read-modify-write of node
documents (MQTT thread, REST threads and the liveness sweep all touch them) and reports
online/offline transitions to its caller, which decides what they mean for deployments.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import hmac
import logging
import secrets
import threading
import uuid
from collections.abc import Mapping
from typing import Any

from cluster_orchestrator.liveness import accepts_status, is_online
from cluster_orchestrator.store import ClusterStateStore, Doc
from treeline_common.clock import Clock
from treeline_common.errors import Conflict, InvalidInput, NotFound
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
    more than half of the online nodes (at least two) fall silent in the same sweep, the
    silence is taken as a broker or network fault and held for ``mass_silence_hold``
    heartbeat timeouts before anyone is declared dead. Last wills still count at once.
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
        # nodes heard from by this process: a node only known from the store (a previous run of
        # the cluster) holds its name by nothing but the start-up grace, so a new process may take it
        self._heard: set[str] = set()

    def _all(self) -> dict[str, Doc]:
        if self._docs is None:
            self._docs = {d["node_id"]: d for d in self._store.list_nodes()}
        return self._docs

    def _save(self, doc: Doc) -> None:
        self._store.put_node(doc)
        self._all()[doc["node_id"]] = doc
        self._dirty.discard(doc["node_id"])

    def register(self, body: Mapping[str, Any]) -> tuple[Doc, bool]:
        """Register or re-register (same name -> same node_id); returns (doc, created).

        Re-registration means a new life of the node: status tracking restarts, so a
        retained ``offline`` from its previous life cannot mark it offline again.
        """
        fields = validate_registration(body)
        now = self._clock.now()
        with self._lock:
            existing = next((d for d in self._all().values() if d["name"] == fields["name"]), None)
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
        """All nodes (copies, by name) with ``online`` as last decided by the sweep and messages."""
        with self._lock:
            return [copy.deepcopy(d) for d in sorted(self._all().values(), key=lambda d: d["name"])]

    def _update(self, node_id: str, change: Any, persist: bool) -> tuple[bool, bool] | None:
        """Apply ``change(doc)`` under the lock; return (was_online, is_online) or None if unknown."""
        with self._lock:
            doc = self._all().get(node_id)
            if doc is None:
                log.debug("message from unregistered node %s dropped", node_id)
                return None
            was = bool(doc.get("online"))
            if change(doc) is False:
                return was, was
            now_online = is_online(doc, self._clock.now(), self.heartbeat_timeout)
            # silence alone never flips a node here: only the sweep judges heartbeats
            doc["online"] = now_online if (now_online or doc.get("status_state") == "offline") else was
            if persist or doc["online"] != was:
                self._save(doc)
            else:
                self._dirty.add(node_id)
            return was, bool(doc["online"])

    def on_telemetry(self, node_id: str, telemetry: NodeTelemetry) -> tuple[bool, bool] | None:
        """Store the latest telemetry and mark the node seen now (cluster clock, not the node's).

        Telemetry from a birth newer than an ``offline`` the cluster holds proves the node
        alive: the offline was a stale or foreign status, and the node is online again.
        """
        self._heard.add(node_id)

        def change(doc: Doc) -> None:
            doc["telemetry"] = dataclasses.asdict(telemetry)
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
            hold = not bus_connected or (len(silent) >= 2 and len(silent) * 2 > online_before)
            if hold and silent:
                if self._silence_since is None:
                    self._silence_since = now
                    log.warning("%d of %d online nodes silent at once%s: holding them online", len(silent),
                                online_before, "" if bus_connected else " while the broker is unreachable")
                if bus_connected and now - self._silence_since >= self._hold:
                    hold = False
            elif not silent:
                self._silence_since = None
            for node_id, doc in docs.items():
                online = verdicts[node_id]
                if online == bool(doc.get("online")) or (hold and node_id in silent):
                    continue
                doc["online"] = online
                self._save(doc)
                flipped.append((node_id, online))
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
            for doc in self._all().values():
                if doc.get("online"):
                    doc["last_seen"] = max(float(doc.get("last_seen") or 0.0), now)
                    self._dirty.add(doc["node_id"])
            self._silence_since = None


# ---------------------------------------------------------------- join tokens (node admission)

JOIN_TOKEN_ENV = "TREELINE_JOIN_TOKEN"
JOIN_PREFIX = "tlj_"
JOIN_TOKENS_KEY = "join_tokens"  # store setting: [{token_id, name, created_at, initial, sha256}]
MIN_JOIN_TOKEN_CHARS = 16


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_join_token() -> tuple[str, str]:
    """``(token, token_id)``: ``tlj_<id>_<secret>`` (the id names it in listings and revocations)."""
    token_id = secrets.token_hex(4)
    return f"{JOIN_PREFIX}{token_id}_{secrets.token_urlsafe(24)}", token_id


class JoinTokens:
    """The tokens a node must show (``Authorization: Bearer``) to register with this cluster.

    Like kubeadm/k3s join tokens: the cluster makes one at its first start (or takes the one it is
    given with ``--join-token``), kept as a SHA-256 digest in the store setting ``join_tokens``
    (the token itself is shown once: in the log when made here, in the answer when made over the
    API). The first one is the *initial* token; it may also create, list and revoke tokens
    (``/api/join-tokens``), which tokens made over the API may not. Thread-safe.
    """

    def __init__(self, store: ClusterStateStore, clock: Clock) -> None:
        self._store = store
        self._clock = clock
        self._lock = threading.Lock()

    def _docs(self) -> list[Doc]:
        stored = self._store.get_setting(JOIN_TOKENS_KEY)
        return [dict(d) for d in stored if isinstance(d, dict)] if isinstance(stored, list) else []

    def _add(self, token: str, token_id: str, name: str, initial: bool) -> Doc:
        doc = {"token_id": token_id, "name": name, "created_at": self._clock.now(), "initial": initial,
               "sha256": _digest(token)}
        self._store.set_setting(JOIN_TOKENS_KEY, [*self._docs(), doc])
        return doc

    def ensure_initial(self, given: str | None = None) -> str | None:
        """Make sure an initial token exists; returns a token only when one was made just now.

        ``given`` (``--join-token``): accepted from now on as an initial token (kept as a digest).
        Without it, the first start makes a random one and returns it, for the log.
        """
        with self._lock:
            docs = self._docs()
            if given:
                if len(given.strip()) < MIN_JOIN_TOKEN_CHARS:
                    need = f"needs at least {MIN_JOIN_TOKEN_CHARS} characters"
                    raise InvalidInput("join token too short", [{"path": "join_token", "message": need}])
                given = given.strip()
                if not any(d.get("sha256") == _digest(given) for d in docs):
                    self._add(given, f"given-{_digest(given)[:8]}", "--join-token", initial=True)
                return None
            if any(d.get("initial") for d in docs):
                return None
            token, token_id = new_join_token()
            self._add(token, token_id, "initial", initial=True)
            return token

    def create(self, name: str = "") -> tuple[Doc, str]:
        """A new (non-initial) token: ``(its doc without the digest, the token)``."""
        token, token_id = new_join_token()
        with self._lock:
            doc = self._add(token, token_id, name, initial=False)
        log.info("join token %s (%s) created", token_id, name or "unnamed")
        return public_join_token(doc), token

    def list(self) -> list[Doc]:
        with self._lock:
            return [public_join_token(d) for d in self._docs()]

    def revoke(self, token_id: str) -> Doc:
        with self._lock:
            docs = self._docs()
            doc = next((d for d in docs if d.get("token_id") == token_id), None)
            if doc is None:
                raise NotFound(f"join token {token_id!r} not found",
                               [{"path": "token_id", "message": f"no join token {token_id!r}"}])
            self._store.set_setting(JOIN_TOKENS_KEY, [d for d in docs if d is not doc])
        log.info("join token %s revoked", token_id)
        return public_join_token(doc)

    def find(self, token: str | None) -> Doc | None:
        """The stored doc of ``token`` (constant-time digest comparison), None when it is not one."""
        if not token:
            return None
        digest = _digest(token)
        with self._lock:
            docs = self._docs()
        match = None
        for doc in docs:
            if hmac.compare_digest(digest, str(doc.get("sha256", ""))):
                match = doc
        return match


def public_join_token(doc: Mapping[str, Any]) -> Doc:
    """A join token doc without its digest."""
    return {k: v for k, v in doc.items() if k != "sha256"}
