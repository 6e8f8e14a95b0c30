"""The cluster's push loop: at once on a significant aggregate change, and releases what the root moved."""

from __future__ import annotations

import threading
from typing import Any

from test_cluster_api import Cluster

from cluster_orchestrator.root_client import RootClient
from cluster_orchestrator.rootsync import RootSync
from cluster_orchestrator.store import InMemoryClusterStateStore
from treeline_common.jobs import ClusterPush
from treeline_common.netutil import poll_until


def wait_until(probe: Any, timeout: float) -> bool:
    """True once ``probe()`` holds, False when ``timeout`` passed first (polled with a deadline)."""
    try:
        return bool(poll_until(probe, timeout, interval=0.01))
    except TimeoutError:
        return False


class AnsweringRoot(RootClient):
    def __init__(self, answer: Any = None) -> None:
        super().__init__("http://root.test:10000")
        self.answer = answer
        self.pushes: list[dict[str, Any]] = []
        self.pushed = threading.Event()

    def push_information(self, cluster_id: str, body: dict[str, Any]) -> Any:
        self.pushes.append(body)
        self.pushed.set()
        return self.answer


def sync(root: AnsweringRoot, aggregate: dict[str, Any], released: list[tuple[str, int]],
         stop: threading.Event, push_interval: float = 3600.0) -> RootSync:
    store = InMemoryClusterStateStore()
    store.set_setting("cluster_id", "cid")
    return RootSync(store, root, "c", "lab", "http://c:1", push_interval,
                    lambda: ClusterPush(aggregate=dict(aggregate), jobs=()), stop,
                    aggregate=lambda: dict(aggregate), on_release=lambda s, i: released.append((s, i)),
                    check_interval=0.05, min_spacing=0.0)


def test_release_entries_of_the_answer_reach_the_orchestrator_and_bad_ones_are_skipped() -> None:
    answer = {"updated": 0, "release": [{"service_id": "s1", "instance": 0, "reason": "moved"},
                                        {"service_id": 5, "instance": 1}, {"service_id": "s2", "instance": "x"},
                                        "nonsense"]}
    released: list[tuple[str, int]] = []
    rs = sync(AnsweringRoot(answer), {"active_nodes": 1}, released, threading.Event())
    assert rs.push_once() and released == [("s1", 0)]


def test_a_significant_change_is_pushed_at_once_not_at_the_next_interval() -> None:
    root = AnsweringRoot({})
    aggregate = {"active_nodes": 3, "memory_total_free_mb": 1000}
    stop = threading.Event()
    rs = sync(root, aggregate, [], stop)
    rs.start()
    try:
        assert wait_until(lambda: len(root.pushes) == 1, 5.0)  # the first push: nothing pushed yet
        aggregate["memory_total_free_mb"] = 1050  # noise: not pushed before the (1 h) interval
        aggregate["active_nodes"] = 3
        assert not wait_until(lambda: len(root.pushes) > 1, 0.3)
        aggregate["active_nodes"] = 2  # a node left: pushed at once
        assert wait_until(lambda: len(root.pushes) == 2, 5.0)
        assert root.pushes[-1]["aggregate"]["active_nodes"] == 2
    finally:
        stop.set()
        rs.join(2.0)


def test_the_orchestrator_deletes_a_released_deployment_and_its_stages() -> None:
    cluster = Cluster()
    node_id = cluster.node("n1", "server")
    cluster.core.submit_job("s1", "0", cluster.job())
    cluster.core.release_job("s1", 0)
    assert cluster.core.get_deployment("s1", "0")["status"] == "DELETED"
    cluster.core.release_job("s1", 0)  # twice is harmless
    cluster.core.release_job("nope", 3)  # unknown: nothing to do
    assert node_id
