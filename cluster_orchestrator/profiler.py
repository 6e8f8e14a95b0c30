"""Profile collection: ask one node per device class to time a model's ops, wait for answers.

Why per device class: op times depend on the hardware (or emulation profile), not on which
node of a class runs them, so one measurement serves every node of the class; the root keeps
it with the model version so later deployments and restarts reuse it. Classes whose profile
does not arrive in time are planned with the regression fallback, never blocked on.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from treeline_common import topics
from treeline_common.messages import ProfileCommand, ProfileResult

log = logging.getLogger(__name__)


class ProfileCollector:
    """Matches ``ProfileResult`` messages (MQTT thread) to waiting deployers (worker threads)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._results: dict[str, ProfileResult] = {}
        self._pending: set[str] = set()

    def report(self, result: ProfileResult) -> None:
        with self._cond:
            if result.request_id in self._pending:
                self._results[result.request_id] = result
                self._cond.notify_all()

    def collect(
        self,
        publish: Callable[[str, Any], None],
        requests: Mapping[str, tuple[str, str]],
        artifact_url: str,
        sha256: str,
        timeout: float,
        stop: threading.Event,
        runs: int = 20,
    ) -> dict[str, ProfileResult]:
        """Send one ProfileCommand per device class (``{device_class: (node_id, ...)}``), one
        after the other, and return the results, keyed by device class, that arrived within
        ``timeout`` seconds each.

        Results with an ``error`` are logged and left out.
        """
        # One class at a time: nodes of one host (emulation, or co-located devices) would
        # otherwise measure each other's load, and every profile would come out inflated.
        ids = {uuid.uuid4().hex: (device_class, node_id)
               for device_class, (node_id, *_) in requests.items()}
        arrived: dict[str, ProfileResult] = {}
        for request_id, (device_class, node_id) in ids.items():
            if stop.is_set():
                break
            with self._cond:
                self._pending.add(request_id)
            try:
                log.info("asking %s to profile model %s for device class %s",
                         node_id, sha256[:12], device_class)
                publish(topics.control_profile(node_id),
                        ProfileCommand(request_id=request_id, artifact_url=artifact_url, sha256=sha256,
                                       runs=runs))

                def answered(rid: str = request_id) -> bool:
                    return stop.is_set() or rid in self._results

                with self._cond:
                    self._cond.wait_for(answered, timeout)
                    if request_id in self._results:
                        arrived[request_id] = self._results.pop(request_id)
            finally:
                with self._cond:
                    self._pending.discard(request_id)
                    self._results.pop(request_id, None)
        profiles: dict[str, ProfileResult] = {}
        for request_id, (device_class, node_id) in ids.items():
            result = arrived.get(request_id)
            if result is None:
                log.warning("no profile from %s (%s) within %.0fs; using the regression",
                            node_id, device_class, timeout)
            elif result.error:
                log.warning("profiling on %s (%s) failed: %s", node_id, device_class, result.error)
            else:
                profiles[device_class] = result
        return profiles


def classes_to_profile(nodes: Sequence[Mapping[str, Any]], known: set[str]) -> dict[str, tuple[str, str]]:
    """``{device_class: (node_id, name)}`` for online nodes whose class has no stored profile
    (the first such node by name serves its class)."""
    chosen: dict[str, tuple[str, str]] = {}
    for node in sorted(nodes, key=lambda n: str(n.get("name"))):
        device_class = str(node.get("device_class") or node.get("profile") or "")
        if node.get("online") and device_class and device_class not in known and device_class not in chosen:
            chosen[device_class] = (str(node["node_id"]), str(node.get("name")))
    return chosen
