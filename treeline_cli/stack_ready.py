"""Waiting until a stack's own children are ready, never trusting a port alone.

Every launch gets a fresh instance id (``TREELINE_INSTANCE_ID`` in its environment), the root and
each cluster report it in ``GET /api/health``, and :func:`wait_answering` accepts only the answer
carrying its own child's id, so another stack's server on the same port is never taken for ours.
Every wait polls with a deadline and fails at once, with the child's log, when a child exits.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

from treeline_cli.processes import ManagedProcess
from treeline_cli.stack_clusters import ClusterInfo
from treeline_common.http import call_json


class Stack(Protocol):
    """What waiting reads of a :class:`treeline_cli.stack.Stack` (a protocol: no import cycle)."""

    @property
    def root_url(self) -> str: ...

    @property
    def cluster_token(self) -> str: ...

    started_clusters: list[ClusterInfo]

    @property
    def clusters(self) -> list[ClusterInfo]: ...

    @property
    def node_names(self) -> list[str]: ...

    def node(self, name: str) -> ManagedProcess: ...

    def process(self, name: str) -> ManagedProcess: ...

    def check_alive(self) -> None: ...

# Registration times come from the cluster's wall clock, launch times from ours (the same machine):
# slack for the clocks' resolution only.
CLOCK_SLACK_S = 0.5


def plural_clusters(count: int) -> str:
    return "the cluster" if count == 1 else f"{count} clusters"


def wait_ready(stack: Stack, timeout: float = 60.0) -> None:
    """Wait until our root and every cluster of ours answer, every cluster is registered and
    active at the root, and every node is online in its own cluster.

    "Our": the root's and each cluster's ``GET /api/health`` must carry the instance id this
    stack gave the child (another stack's server on the same port is never taken for ours),
    the clusters the root lists must have our clusters' URLs, and a node counts only when its
    cluster lists it online under our node's name AND registered after we started that node's
    process (a cluster restarted on an old data directory still lists the previous run's nodes
    as online for a while). A child that exits meanwhile fails the wait at once, with the tail
    of its log.
    """
    wait_answering(stack, "root", stack.root_url, timeout)
    for cluster in stack.started_clusters:
        wait_answering(stack, cluster.process, cluster.url, timeout)
    poll_alive(stack, lambda: _root_has_our_clusters(stack), timeout,
               f"{plural_clusters(len(stack.started_clusters))} to register with the root")
    poll_alive(stack, lambda: _nodes_online(stack), timeout, f"{len(stack.node_names)} nodes to come online")
    poll_alive(stack, lambda: _root_sees_nodes(stack), timeout, "the root to see every cluster's nodes")


def _root_has_our_clusters(stack: Stack) -> bool:
    headers = {"Authorization": f"Bearer {stack.cluster_token}"} if stack.cluster_token else None
    answer = call_json("GET", f"{stack.root_url}/api/clusters/", headers=headers, timeout=2)
    listed = answer.get("clusters", []) if isinstance(answer, dict) else answer
    active = {c.get("url") for c in listed if c.get("active", True)}
    return all(c.url in active for c in stack.started_clusters)


def _root_sees_nodes(stack: Stack) -> bool:
    """Each cluster's last push at the root counts at least the nodes the stack started in it."""
    headers = {"Authorization": f"Bearer {stack.cluster_token}"} if stack.cluster_token else None
    answer = call_json("GET", f"{stack.root_url}/api/clusters/", headers=headers, timeout=2)
    listed = answer.get("clusters", []) if isinstance(answer, dict) else answer
    online = {c.get("url"): int((c.get("aggregate") or {}).get("active_nodes") or 0) for c in listed}
    return all(online.get(c.url, 0) >= len(c.node_names) for c in stack.started_clusters)


def _nodes_online(stack: Stack) -> bool:
    for cluster in stack.clusters:
        nodes = call_json("GET", f"{cluster.url}/api/nodes", timeout=2)["nodes"]
        launched = {name: stack.node(name).started_at for name in cluster.node_names}
        ready = {n.get("name") for n in nodes if n.get("online") and n.get("name") in launched
                 and float(n.get("registered_at") or 0) >= launched[n["name"]] - CLOCK_SLACK_S}
        if len(ready) != len(launched):
            return False
    return True


def wait_answering(stack: Stack, name: str, url: str, timeout: float = 60.0) -> None:
    """Wait until ``url``'s ``GET /api/health`` answers with child ``name``'s instance id.

    An answer with another id is another process on that port (our child has not bound it
    yet, or cannot): it is remembered for the error message, never accepted.
    """
    managed = stack.process(name)
    seen: list[str] = []

    def answers_as_ours() -> bool:
        answer = call_json("GET", f"{url}/api/health", timeout=2)
        instance = answer.get("instance_id") if isinstance(answer, dict) else None
        if instance == managed.instance_id:
            return True
        seen[:] = [f"{url} answers as another process (instance {instance})"]
        return False

    try:
        poll_alive(stack, answers_as_ours, timeout, f"the {name} to answer at {url}", interval=0.05)
    except TimeoutError as exc:
        raise TimeoutError(f"{exc}; {seen[0]}" if seen else str(exc)) from None


def poll_alive(stack: Stack, probe: Callable[[], bool], timeout: float, what: str,
               interval: float = 0.2) -> None:
    """``poll_until`` that raises at once (with its log) when a child has exited."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        stack.check_alive()
        try:
            if probe():
                return
        except Exception as exc:  # noqa: BLE001 - the peer may not be up yet
            last_error = exc
        if time.monotonic() >= deadline:
            suffix = f" (last error: {last_error})" if last_error else ""
            raise TimeoutError(f"timed out after {timeout:.1f}s waiting for {what}{suffix}")
        time.sleep(interval)
