"""The cluster's two loops towards the root: registration and the information push.

- registration: retried with backoff until the root answers (the cluster works without it:
  nodes register and telemetry flows; jobs only come once the root knows the cluster);
- push: :class:`~treeline_common.jobs.ClusterPush` (aggregate + one job report per
  deployment) every push interval and at once after any change: a status or node change
  (:meth:`RootSync.changed`), or an aggregate that moved enough since the last push
  (:func:`~cluster_orchestrator.aggregate.significant_change`, checked every
  ``check_interval``). Changes in quick succession coalesce into one push, and pushes are at
  least ``min_spacing`` apart (a mass last will of 1,000 nodes is one or two pushes, not a
  thousand). A failed push is retried on the next tick.
- release: the root's answer to a push names the deployments this cluster must let go
  (``release``: they were moved to another cluster while this one was out of touch, or
  deleted); each is handed to ``on_release`` (the orchestrator deletes it and its stages).

Each loop is guarded: an exception is logged and the loop goes on.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from cluster_orchestrator.aggregate import significant_change
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
                 push_interval: float, body: Callable[[], ClusterPush], stop: threading.Event, *,
                 aggregate: Callable[[], dict[str, Any]] | None = None,
                 on_release: Callable[[str, int], None] | None = None,
                 check_interval: float = 1.0, min_spacing: float = 0.5) -> None:
        self._store = store
        self._root = root
        self._name = name
        self._location = location
        self.public_url = public_url
        self._push_interval = push_interval
        self._body = body
        self._stop = stop
        self._aggregate = aggregate
        self._on_release = on_release
        self._check_interval = max(0.05, min(check_interval, push_interval))
        self._min_spacing = max(0.0, min_spacing)
        self._last_aggregate: dict[str, Any] | None = None
        self._last_push = 0.0
        self._last_attempt = 0.0
        self.pushes = 0  # successful pushes since start (benchmarks read it)
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
        body = self._body()
        self._last_attempt = time.monotonic()
        try:
            answer = self._root.push_information(cluster_id, body.to_dict())
        except TreelineError as exc:
            log.warning("push to root failed (retried next tick): %s", exc)
            return False
        self._last_aggregate = dict(body.aggregate)
        self._last_push = time.monotonic()
        self.pushes += 1
        self._release(answer)
        return True

    def _release(self, answer: Any) -> None:
        """Hand every ``release`` entry of the root's answer to ``on_release``."""
        if self._on_release is None or not isinstance(answer, Mapping):
            return
        for item in answer.get("release") or []:
            if not isinstance(item, Mapping) or not isinstance(item.get("service_id"), str):
                continue
            try:
                instance = int(item.get("instance", -1))
            except (TypeError, ValueError):
                continue
            log.warning("the root released %s/%s from this cluster (%s): deleting it",
                        item["service_id"], instance, item.get("reason", "moved"))
            try:
                self._on_release(item["service_id"], instance)
            except TreelineError as exc:
                log.info("release of %s/%s: %s", item["service_id"], instance, exc)

    def _due(self, now: float) -> bool:
        """A push is due: asked for, the periodic interval passed, or the aggregate moved enough."""
        if self._wanted.is_set() or now - self._last_attempt >= self._push_interval:
            return True
        if self._aggregate is None:
            return False
        return significant_change(self._last_aggregate, self._aggregate())

    def _push_loop(self) -> None:
        while not self._stop.is_set():
            self._wanted.wait(self._check_interval)
            if self._stop.is_set():
                return
            try:
                now = time.monotonic()
                if not self._due(now):
                    continue
                spacing = self._min_spacing - (now - self._last_attempt)
                if spacing > 0 and self._stop.wait(spacing):  # coalesce bursts of changes
                    return
                self._wanted.clear()
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
