"""``RootClient.wait_deployed``: RUNNING ends the wait, FAILED raises, and a training service that
already finished (DELETED after its job registered the result) ends it too."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from treeline_cli.root_client import DeploymentFailed, RootClient


def _client(docs: list[dict[str, Any]]) -> RootClient:
    client = RootClient("http://127.0.0.1:1")
    answers: Iterator[dict[str, Any]] = iter(docs)
    client.service = lambda service_id: next(answers)  # type: ignore[method-assign]
    return client


def test_a_finished_training_ends_the_wait() -> None:
    done = {"status": "DELETED", "status_detail": "training done: registered digits:2",
            "virtualization": "ml-training"}
    doc = _client([{"status": "DEPLOYING", "virtualization": "ml-training"}, done]).wait_deployed(
        "s", timeout=5, interval=0.0)
    assert doc == done


def test_a_deleted_inference_service_is_no_success_and_failed_raises() -> None:
    deleted = {"status": "DELETED", "virtualization": "ml-model"}
    with pytest.raises(TimeoutError):
        _client([deleted] * 1000).wait_deployed("s", timeout=0.05, interval=0.001)
    with pytest.raises(DeploymentFailed, match="no nodes"):
        _client([{"status": "FAILED", "status_detail": "no nodes"}]).wait_deployed("s", timeout=5, interval=0.0)
