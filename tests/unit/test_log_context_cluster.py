"""The cluster's reconcile loop logs each deployment's work with its deployment id, in the
deployment worker's own thread too."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from tests.unit.test_cluster_api import Cluster
from tests.unit.test_log_context import Records


@pytest.fixture
def records() -> Iterator[Records]:
    root, handler = logging.getLogger(), Records()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    yield handler
    root.removeHandler(handler)
    root.setLevel(level)


def test_reconcile_and_the_worker_log_with_the_deployment_id(records: Records) -> None:
    cluster = Cluster()
    cluster.node("server-1", "server")
    cluster.root.profiles = {"server": {"op_ms": {}, "total_ms": 1.0}}  # stored: no 5 s wait to profile
    assert cluster.http.post("/api/service/s1/0", json=cluster.job()).status_code == 202
    before = len(records.records)
    assert [a.deployment_id for a in cluster.core.reconcile_once()] == ["s1-0"]
    for worker in cluster.core.actions.workers():
        worker.join(30)
        assert not worker.is_alive()
    logging.getLogger("treeline.test").info("outside any deployment")
    ours = ("cluster_orchestrator", "treeline.test")
    lines = [(str(r.threadName), r.name, r.__dict__["deployment_id"], r.getMessage())
             for r in records.records[before:] if r.name.startswith(ours)]
    planning = [line for line in lines if line[3].startswith("planning deployment_id=s1-0")]
    assert planning and planning[0][2] == "s1-0"
    worker_lines = [line for line in lines if line[0].startswith("deploy-s1-0")]
    assert worker_lines, lines  # the worker logged (its dry-run attempt failed here)
    assert {line[2] for line in worker_lines} == {"s1-0"}, worker_lines
    assert lines[-1][2:] == ("", "outside any deployment")  # unbound once the action is done
