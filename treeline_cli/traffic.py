"""Steady traffic to one service from a background thread, following re-plans.

:class:`ServiceTraffic` sends the same inputs again and again through a :class:`ServiceClient`
that resolves the service's entry at the root (so a re-plan or a move is followed, the client
retrying within its deadline) until :meth:`ServiceTraffic.finish`. Every request that ends in an
error is kept in ``failures``; subclasses count the answers their own way in :meth:`_answered`.
Used where a scenario or benchmark must show that nothing failed while something moved.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from typing import Any, Self

import numpy as np

from node_engine.data_plane.service_client import RetryPolicy, ServiceClient
from treeline_cli.inference import service_resolver

POLICY = RetryPolicy(deadline=20.0, attempt_timeout=3.0)  # one request may ride out a re-plan


class ServiceTraffic:
    """Sends ``inputs`` to service ``service_id`` from a thread named ``name`` until :meth:`finish`."""

    def __init__(self, root_url: str, service_id: str, inputs: Mapping[str, np.ndarray], name: str) -> None:
        self._inputs = dict(inputs)
        self._resolve = service_resolver(root_url, service_id)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.failures: list[str] = []
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> Self:
        self._thread.start()
        return self

    def finish(self, timeout: float = 30.0) -> None:
        self._stop.set()
        self._thread.join(timeout)

    def _run(self) -> None:
        with ServiceClient(self._resolve, policy=POLICY) as client:
            while not self._stop.is_set():
                started = time.perf_counter()
                try:
                    outputs, _ = client.infer(self._inputs)
                except Exception as exc:  # noqa: BLE001 - every failed request is counted
                    with self._lock:
                        self.failures.append(str(exc))
                    continue
                with self._lock:
                    self._answered(outputs, (time.perf_counter() - started) * 1000.0)

    def _answered(self, outputs: Mapping[str, Any], latency_ms: float) -> None:
        """One answer (called with the lock held); ``latency_ms`` includes the client's retries."""
