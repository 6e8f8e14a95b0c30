"""The cluster's two loops towards the root: registration and the information push.

- registration: retried with backoff until the root answers (the cluster works without it:
  nodes register and telemetry flows; jobs only come once the root knows the cluster);
- push: :class:`~treeline_common.jobs.ClusterPush` (aggregate + one job report per
  deployment) every push interval and at once after any change (changes in quick
  succession coalesce into one push). A failed push is retried on the next tick.

Each loop is guarded: an exception is logged and the loop goes on.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from cluster_orchestrator.liveness import backoff_delay
from cluster_orchestrator.root_client import RootClient
from cluster_orchestrator.store import ClusterStateStore
from treeline_common.errors import TreelineError
from treeline_common.jobs import ClusterPush

log = logging.getLogger(__name__)

CLUSTER_ID_KEY = "cluster_id"


class RootSync:
    """Owns the registration and push threads; :meth:`changed` asks for a push now."""

    def __init__(self, store: ClusterStateStore, root: RootClient, name: str, location: str, public_url: str,
                 push_interval: float, body: Callable[[], ClusterPush], stop: threading.Event) -> None:
        self._store = store
        self._root = root
        self._name = name
        self._location = location
        self.public_url = public_url
        self._push_interval = push_interval
        self._body = body
        self._stop = stop
        self._wanted = threading.Event()
        self.registered = threading.Event()
        self._threads: list[threading.Thread] = []

    @property
    def cluster_id(self) -> str | None:
        value = self._store.get_setting(CLUSTER_ID_KEY)
        return str(value) if value else None

    def start(self) -> None:
        if self.cluster_id:
            self.registered.set()
        for target, name in ((self._register_loop, "root-register"), (self._push_loop, "root-push")):
            thread = threading.Thread(target=target, name=f"cluster-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def join(self, timeout: float) -> None:
        self._wanted.set()
        for thread in self._threads:
            thread.join(timeout)

    def changed(self) -> None:
        """A status or node change: push to the root at once (coalesced)."""
        self._wanted.set()

    def push_once(self) -> bool:
        """Push to the root; False (logged) when it fails or the cluster is not registered yet."""
        cluster_id = self.cluster_id
        if cluster_id is None:
            return False
        try:
            self._root.push_information(cluster_id, self._body().to_dict())
            return True
        except TreelineError as exc:
            log.warning("push to root failed (retried next tick): %s", exc)
            return False

    def _push_loop(self) -> None:
        while not self._stop.is_set():
            self._wanted.wait(self._push_interval)
            self._wanted.clear()
            if self._stop.is_set():
                return
            try:
                self.push_once()
            except Exception:  # the loop must survive anything
                log.exception("push loop error")

    def _register_loop(self) -> None:
        attempt = 0
        while not self._stop.is_set():
            try:
                cluster_id = self._root.register_cluster(self._name, self._location, self.public_url)
            except Exception as exc:  # noqa: BLE001 - retried with backoff whatever it was
                delay = backoff_delay(attempt)
                level = logging.INFO if attempt == 0 and isinstance(exc, TreelineError) else logging.WARNING
                log.log(level, "root registration failed (retry in %.1fs): %s", delay, exc)
                attempt += 1
                self._stop.wait(delay)
                continue
            self._store.set_setting(CLUSTER_ID_KEY, cluster_id)
            self.registered.set()
            log.info("registered with the root as cluster %s", cluster_id)
            self._wanted.set()
            return
