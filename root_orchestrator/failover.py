"""Cluster failover: re-place the deployments of a cluster that stopped pushing, exactly once.

A level-triggered reconcile loop at the root (every ``interval_s``), over the stored services
and clusters, in the spirit of the cluster's own :mod:`cluster_orchestrator.reconcile`:

- a cluster is *inactive* when it has not pushed for ``window_s`` (the root's
  ``--active-window``); nothing is declared inactive during the first ``window_s`` after the
  root starts (a restarted root has not heard anybody yet);
- every live instance on an inactive cluster that is not already moving is re-placed: the
  clusters that may take it (:mod:`.cluster_filter`, the inactive one excluded, so a
  ``clusters``/``direct`` constraint that names only the lost cluster blocks the move, with a
  ``failover_blocked`` event naming why) are ordered by dry-run plans (:mod:`.cluster_choice`)
  and the job goes to the first that accepts it, under the same service id and instance number.
  The instance is *claimed* first (``moving_to`` set under the store's revision check), so a
  move starts once however many loops or pushes race, and the target's early reports are
  recognised (:mod:`.pushes`);
- the old placement keeps serving until the target reports RUNNING, then the instance switches
  over (make-before-break across clusters; :mod:`.pushes`); the old cluster, if it returns, is
  told to release the deployment in the answer to its next push;
- a hierarchical training part is never moved: it fails (:meth:`ClusterFailover._fail_part`);
- a move whose target goes inactive or is not RUNNING within ``move_timeout_s`` is abandoned
  (the target releases it on its next push) and tried again on the next pass, at most every
  ``retry_s``.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import root_orchestrator.training_hierarchy as hierarchy
from root_orchestrator.cluster_choice import Choice
from root_orchestrator.instance_docs import add_event, find_instance, mirror
from root_orchestrator.instances import InstanceManager, objective_of
from root_orchestrator.ranking import is_active
from treeline_common.errors import NotFound, TreelineError
from treeline_common.jobs import JobStatus
from treeline_common.training_hierarchy import ROLE_ROOT

log = logging.getLogger(__name__)

DEFAULT_INTERVAL_S = 1.0
DEFAULT_MOVE_TIMEOUT_S = 120.0
DEFAULT_RETRY_S = 10.0

_TERMINAL = (JobStatus.DELETED.value,)


class ClusterFailover:
    """Owns the failover thread; :meth:`reconcile_once` is one pass (tests call it directly)."""

    def __init__(self, manager: InstanceManager, interval_s: float = DEFAULT_INTERVAL_S,
                 move_timeout_s: float = DEFAULT_MOVE_TIMEOUT_S, retry_s: float = DEFAULT_RETRY_S) -> None:
        self.manager = manager
        self.interval_s = interval_s
        self.move_timeout_s = move_timeout_s
        self.retry_s = retry_s
        self.started_at = manager.clock.now()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def window_s(self) -> float:
        return self.manager.active_window_s

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="root-failover", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.reconcile_once()
            except Exception:  # the loop must survive anything
                log.exception("failover pass failed")

    def reconcile_once(self) -> list[dict[str, Any]]:
        """One pass; returns what it did as ``[{action, service_id, instance, ...}]``."""
        m = self.manager
        now = m.clock.now()
        if now - self.started_at < self.window_s:
            return []
        clusters = {str(c["cluster_id"]): c for c in m.stores.clusters.list()}
        inactive = {cid for cid, c in clusters.items() if not is_active(c, now, self.window_s)}
        done: list[dict[str, Any]] = []
        for service in m.stores.applications.list_services():
            for inst in service.get("instances") or []:
                if inst.get("status") in _TERMINAL:
                    continue
                target = inst.get("moving_to")
                if target:
                    stuck = now - float(inst.get("move_started") or now) > self.move_timeout_s
                    if target in inactive or stuck or target not in clusters:
                        why = "timed out" if stuck else "target inactive"
                        done.append(self._abandon(service, inst, why))
                    continue
                if inst.get("cluster_id") in inactive and inst.get("training_part"):
                    if inst.get("status") != JobStatus.FAILED.value:  # a hierarchical part is not moved
                        done.append(self._fail_part(service, inst, clusters[str(inst["cluster_id"])]))
                    continue
                if inst.get("cluster_id") in inactive and float(inst.get("failover_retry_at") or 0) <= now:
                    done.append(self._move(service, inst, clusters[str(inst["cluster_id"])]))
        return [d for d in done if d]

    def _change(self, service_id: str, number: int, change: Any) -> bool:
        """Apply ``change(inst) -> bool`` (False: leave it) to one instance under the revision check."""
        applied: list[bool] = []

        def mutate(doc: dict[str, Any]) -> dict[str, Any] | None:
            instances = [dict(i) for i in doc.get("instances") or []]
            inst = find_instance(instances, number)
            if inst is None or not change(inst):
                return None
            applied.append(True)
            return mirror({"instances": instances}, inst)

        try:
            self.manager._update(service_id, mutate)
        except NotFound:
            return False
        return bool(applied)

    def _fail_part(self, service: dict[str, Any], inst: dict[str, Any],
                   old: dict[str, Any]) -> dict[str, Any]:
        """A hierarchical training part on an inactive cluster fails instead of moving: a cluster
        part's data stays on its cluster's nodes (moved, it would train another cluster's data
        twice, as a flat job, and register a version of its own), and the root part's cluster
        parts dial its aggregator there. The root carries on without a lost cluster part while
        ``min_clusters`` answer; a lost root part fails the service and its cluster parts are
        deleted. A cluster that comes back is told to release what it still holds."""
        service_id, number, now = str(service["service_id"]), int(inst["instance"]), self.manager.clock.now()
        role = str(inst.get("training_part"))
        detail = (f"cluster {old.get('cluster_name')} stopped pushing: a hierarchical training {role} part "
                  "is not moved to another cluster (its data and aggregator are there)")

        def change(current: dict[str, Any]) -> bool:
            if current.get("status") == JobStatus.FAILED.value:
                return False
            if current.get("cluster_id") != old["cluster_id"]:
                return False
            current.update(status=JobStatus.FAILED.value, status_detail=detail)
            add_event(current, {"ts": now, "kind": "failover_skipped", "cause": "cluster_failover",
                                "from": old.get("cluster_id"), "message": detail})
            return True

        if not self._change(service_id, number, change):
            return {}
        log.warning("%s/%s: %s", service_id, number, detail)
        if role == ROLE_ROOT:
            try:
                hierarchy.delete_cluster_parts(self.manager, service, number)
            except TreelineError as exc:  # a part whose cluster is unreachable: released on its next push
                log.warning("%s/%s: its cluster parts could not all be deleted: %s", service_id, number, exc)
        return {"action": "fail_part", "service_id": service_id, "instance": number, "role": role}

    def _abandon(self, service: dict[str, Any], inst: dict[str, Any], why: str) -> dict[str, Any]:
        target, now = inst.get("moving_to"), self.manager.clock.now()

        def change(current: dict[str, Any]) -> bool:
            if current.get("moving_to") != target:
                return False
            current.update(moving_to=None, move_status=None, move_started=None)
            add_event(current, {"ts": now, "kind": "move_failed", "cause": "cluster_failover", "to": target,
                                "message": f"move abandoned: {why}"})
            return True

        self._change(str(service["service_id"]), int(inst["instance"]), change)
        log.warning("move of %s/%s to cluster %s abandoned: %s", service["service_id"], inst["instance"],
                    target, why)
        return {"action": "abandon", "service_id": service["service_id"], "instance": inst["instance"],
                "to": target, "why": why}

    def _move(self, service: dict[str, Any], inst: dict[str, Any], old: dict[str, Any]) -> dict[str, Any]:
        m, now = self.manager, self.manager.clock.now()
        service_id, number, old_id = str(service["service_id"]), int(inst["instance"]), str(old["cluster_id"])
        try:
            model = inst.get("model") or {}
            version = m.stores.models.get_version(str(model["name"]), int(model["version"]))
            candidates, rejected = m.candidates(service.get("microservice") or {}, version, exclude=(old_id,))
        except (TreelineError, KeyError) as exc:
            message = exc.message if isinstance(exc, TreelineError) else f"no resolved model ({exc})"
            details = getattr(exc, "details", [])
            self._blocked(service_id, number, old, message, details)
            return {"action": "blocked", "service_id": service_id, "instance": number, "why": message}
        job = m.job_for(service, number, version)
        choice = m.chooser.choose(candidates, job, objective_of(service), rejected)
        for cluster in choice.order:
            if self._try_target(service_id, number, old_id, cluster, job, choice):
                return {"action": "move", "service_id": service_id, "instance": number, "from": old_id,
                        "to": cluster["cluster_id"]}
        self._blocked(service_id, number, old, "no cluster accepted the job", [])
        return {"action": "blocked", "service_id": service_id, "instance": number,
                "why": "no cluster accepted the job", "at": now}

    def _try_target(self, service_id: str, number: int, old_id: str, cluster: dict[str, Any],
                    job: dict[str, Any], choice: Choice) -> bool:
        m, now, target = self.manager, self.manager.clock.now(), str(cluster["cluster_id"])

        def claim(current: dict[str, Any]) -> bool:
            if current.get("cluster_id") != old_id or current.get("moving_to"):
                return False  # moved or moving already: exactly once
            current.update(moving_to=target, move_started=now, move_status=JobStatus.SCHEDULED.value)
            add_event(current, choice.event(cluster, "failover", now))
            return True

        if not self._change(service_id, number, claim):
            return True  # somebody else moved it: nothing more to do here
        try:
            m.client.deploy(str(cluster["url"]), service_id, number, job)
        except TreelineError as exc:
            log.warning("failover of %s/%s: cluster %s refused: %s", service_id, number,
                        cluster.get("cluster_name"), exc)

            def unclaim(current: dict[str, Any]) -> bool:
                if current.get("moving_to") != target:
                    return False
                current.update(moving_to=None, move_status=None, move_started=None)
                return True

            self._change(service_id, number, unclaim)
            return False
        log.info("failover: %s/%s moving from cluster %s to %s", service_id, number, old_id,
                 cluster.get("cluster_name"))
        return True

    def _blocked(self, service_id: str, number: int, old: dict[str, Any], message: str,
                 details: list[dict[str, Any]]) -> None:
        """Record once per retry period why the instance cannot leave its inactive cluster."""
        now = self.manager.clock.now()

        def change(current: dict[str, Any]) -> bool:
            current["failover_retry_at"] = now + self.retry_s
            current["status_detail"] = (f"cluster {old.get('cluster_name')} is inactive and the deployment "
                                        f"cannot move: {message}")
            last = (current.get("events") or [{}])[-1]
            if last.get("kind") != "failover_blocked" or last.get("message") != message:
                add_event(current, {"ts": now, "kind": "failover_blocked", "cause": "cluster_failover",
                                    "from": old.get("cluster_id"), "message": message,
                                    "reasons": {d.get("path", ""): d.get("message", "") for d in details}})
            return True

        self._change(service_id, number, change)
        log.warning("%s/%s cannot leave inactive cluster %s: %s", service_id, number, old.get("cluster_name"),
                    message)
