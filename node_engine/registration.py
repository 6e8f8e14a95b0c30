"""Registration with the cluster orchestrator, retried until the cluster answers.

A node may well start before its cluster (start order is not guaranteed, and a cluster
may restart), so an unreachable or failing cluster is retried with a capped exponential
backoff; only an answer that says our request is wrong (4xx) is given up on. The wait
between attempts is on the stop event, so SIGTERM during registration exits at once.

The node shows its join token as ``Authorization: Bearer <token>``; a cluster that refuses it
answers 401, which retrying cannot fix. The answer names the broker and, when the cluster owns
the broker's identities, this node's own MQTT username and password (and ``mqtt_tls``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from treeline_common.errors import Conflict, TreelineError, Unavailable
from treeline_common.http import call_json

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Registration:
    node_id: str
    cluster_id: str
    mqtt_host: str
    mqtt_port: int
    telemetry_interval: float | None
    mqtt_username: str | None = None
    mqtt_password: str | None = field(default=None, repr=False)
    mqtt_tls: bool = False


def backoff_delay(attempt: int, base: float = 0.2, cap: float = 5.0) -> float:
    """Seconds to wait before retry number ``attempt`` (0-based): 0.2, 0.4, 0.8, ... 5.0."""
    return min(cap, base * (2 ** min(attempt, 16)))


def parse_answer(answer: Any) -> Registration:
    if not isinstance(answer, dict) or "node_id" not in answer or "mqtt_port" not in answer:
        raise TreelineError(f"registration answer lacks node_id/mqtt_port: {answer!r}")
    interval = answer.get("telemetry_interval")
    return Registration(
        node_id=str(answer["node_id"]),
        cluster_id=str(answer.get("cluster_id", "")),
        mqtt_host=str(answer.get("mqtt_host") or "127.0.0.1"),
        mqtt_port=int(answer["mqtt_port"]),
        telemetry_interval=float(interval) if interval else None,
        mqtt_username=str(answer["mqtt_username"]) if answer.get("mqtt_username") else None,
        mqtt_password=str(answer["mqtt_password"]) if answer.get("mqtt_password") else None,
        mqtt_tls=answer.get("mqtt_tls") is True,
    )


def register(cluster_url: str, body: dict[str, Any], stop: threading.Event,
             timeout: float = 5.0, conflict_grace: float = 15.0,
             monotonic: Callable[[], float] = time.monotonic,
             join_token: str | None = None) -> Registration | None:
    """POST the body until the cluster accepts it; None if ``stop`` was set first.

    Raises the cluster's error for a rejection that retrying cannot fix (4xx). A name held
    by another live node (409 CONFLICT) is retried for ``conflict_grace`` seconds first: a
    previous life of this node that froze rather than died is declared dead by then, while
    a second node started under the same name gives up with the cluster's reason.
    """
    url = f"{cluster_url}/api/node/register"
    headers = {"Authorization": f"Bearer {join_token}"} if join_token else None
    attempt = 0
    conflict_since: float | None = None
    while not stop.is_set():
        try:
            return parse_answer(call_json("POST", url, json=body, timeout=timeout, headers=headers))
        except Unavailable as exc:
            reason = str(exc)
        except Conflict as exc:
            now = monotonic()
            conflict_since = now if conflict_since is None else conflict_since
            if now - conflict_since >= conflict_grace:
                raise
            reason = str(exc)
        except TreelineError as exc:
            if exc.code != TreelineError.code:  # a typed 4xx: our request is wrong
                raise
            reason = str(exc)
        delay = backoff_delay(attempt)
        if attempt == 0 or attempt % 10 == 0:
            log.warning("cluster at %s not ready (%s); retrying in %.1fs", cluster_url, reason, delay)
        attempt += 1
        stop.wait(delay)
    return None
