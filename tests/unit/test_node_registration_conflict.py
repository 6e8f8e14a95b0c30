"""Registration gives a name held by another live node a grace period, then gives up with the reason."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from node_engine import registration
from treeline_common.errors import Conflict


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_conflict_is_retried_for_the_grace_then_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock()
    calls: list[str] = []

    def call_json(method: str, url: str, **kw: Any) -> Any:
        calls.append(url)
        clock.t += 4.0
        raise Conflict("node name 'server-1' is held by another live node engine")

    monkeypatch.setattr(registration, "call_json", call_json)
    monkeypatch.setattr(registration, "backoff_delay", lambda attempt: 0.0)
    with pytest.raises(Conflict, match="held by another live node"):
        registration.register("http://cluster", {"name": "server-1"}, threading.Event(), conflict_grace=10.0,
                              monotonic=clock)
    assert len(calls) == 4  # conflicts at t = 4, 8, 12, 16: given up once 12 s passed since the first


def test_conflict_that_clears_registers(monkeypatch: pytest.MonkeyPatch) -> None:
    answers: list[Any] = [Conflict("held"), {"node_id": "n-1", "mqtt_port": 1883, "cluster_id": "c"}]

    def call_json(method: str, url: str, **kw: Any) -> Any:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    monkeypatch.setattr(registration, "call_json", call_json)
    monkeypatch.setattr(registration, "backoff_delay", lambda attempt: 0.0)
    result = registration.register("http://cluster", {"name": "n"}, threading.Event())
    assert result is not None and result.node_id == "n-1"
