"""The cluster's MQTT identities: its own, and one per node, enforced by the broker it owns.

With an auth directory (``--mqtt-auth-dir``: the broker's ``passwd``, ``acl`` and ``broker.pid``,
see :mod:`treeline_common.mqtt_acl`), the cluster is the only writer of the broker's password
file. Every node registration gets a fresh random password under the node id as username; the
cluster keeps only its hash (store setting ``mqtt_credentials``), rewrites the password file
(its own user, then every node's hash) and sends SIGHUP to the broker, which re-reads the file.
The registration answer is given once a probe connection with the new credentials succeeds
(bounded by ``probe_timeout``), so the node's first connect is not refused. At start the file is
rewritten from the store, so a restarted cluster (or broker) keeps every node's last password.

Without an auth directory nothing is issued and nodes connect without credentials (a broker
the operator manages, or an open test broker).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cluster_orchestrator.store import ClusterStateStore
from treeline_common.mqtt_acl import BrokerAuth, check_username, hash_password, new_password, verify_password

log = logging.getLogger(__name__)

CREDENTIALS_KEY = "mqtt_credentials"  # store setting: {node_id: "$7$..." hash}

Probe = Callable[[str, str, float], bool]  # (username, password, timeout) -> connected


class MqttCredentials:
    """Issues per-node MQTT credentials and keeps the broker's password file in step.

    ``probe`` (see :func:`cluster_orchestrator.mqtt_bus.can_connect`) tells when the broker has
    taken a new password; None skips the check (the node's client retries a refused connect).
    Thread-safe: registrations arrive on several HTTP threads.
    """

    def __init__(self, store: ClusterStateStore, auth_dir: str | Path, username: str, password: str, *,
                 probe: Probe | None = None, probe_timeout: float = 2.0) -> None:
        self._store = store
        self.auth = BrokerAuth(Path(auth_dir), check_username(username))
        self.username = username
        self.password = password
        self._probe = probe
        self._probe_timeout = probe_timeout
        self._lock = threading.Lock()

    def _hashes(self) -> dict[str, str]:
        stored = self._store.get_setting(CREDENTIALS_KEY)
        return {str(k): str(v) for k, v in stored.items()} if isinstance(stored, dict) else {}

    def start(self) -> None:
        """Write the ACL and the password file (own user plus every stored node) and reload the broker."""
        with self._lock:
            hashes = self._hashes()
            self.auth.write(self.password, hashes)
            self._reload()
        log.info("MQTT identities: %d node credential(s) in %s", len(hashes), self.auth.password_file)

    def issue(self, node_id: str) -> dict[str, Any]:
        """A new password for ``node_id`` (its MQTT username): ``{mqtt_username, mqtt_password}``.

        Replaces the node's previous one (a re-registration is a new life of the node).
        """
        password = new_password()
        with self._lock:
            hashes = self._hashes()
            hashes[check_username(node_id)] = hash_password(password)
            self._store.set_setting(CREDENTIALS_KEY, hashes)
            self.auth.write(self.password, hashes)
            self._reload()
        self._await_accepted(node_id, password)
        return {"mqtt_username": node_id, "mqtt_password": password}

    def verify(self, username: str, password: str) -> bool:
        """Whether ``password`` is ``username``'s current MQTT password (a node's own credential)."""
        if username == self.username:
            return bool(password) and password == self.password
        hashed = self._hashes().get(username)
        return hashed is not None and verify_password(password, hashed)

    def _reload(self) -> None:
        """SIGHUP to the broker named by the pid file: Mosquitto re-reads its password and ACL files."""
        pid_file = self.auth.pid_file
        try:
            pid = int(pid_file.read_text().strip())
            os.kill(pid, signal.SIGHUP)
        except FileNotFoundError:
            log.warning("no broker pid file %s: the broker reads the new credentials at its next start",
                        pid_file)
        except (ValueError, ProcessLookupError, PermissionError) as exc:
            log.warning("cannot signal the broker to reload (%s: %s); it reads the new credentials at its "
                        "next start", pid_file, exc)

    def _await_accepted(self, username: str, password: str) -> None:
        if self._probe is None:
            return
        deadline = time.monotonic() + self._probe_timeout
        while True:
            if self._probe(username, password, max(0.2, deadline - time.monotonic())):
                return
            if time.monotonic() >= deadline:
                log.warning("the broker did not accept %s's new credentials within %.1fs; the node retries",
                            username, self._probe_timeout)
                return
            time.sleep(0.05)
