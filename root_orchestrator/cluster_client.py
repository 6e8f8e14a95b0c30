"""Every call from the root to a cluster orchestrator goes through one small interface.

The REST layer depends on :class:`ClusterClient` only, so tests inject a fake and the HTTP
details (timeouts, error decoding) live in :class:`HttpClusterClient` alone. Failures surface as
Treeline errors: :class:`~treeline_common.errors.Unavailable` when the cluster cannot be reached,
the cluster's own error class when it answered with one.

Credentials: every call carries ``Authorization: Bearer <token>``, the token that cluster
authenticates to the root with (a cluster checks it on its job, plan and profile routes). The
root learns it from the cluster's registration and pushes (:meth:`ClusterClient.remember_token`,
kept in memory only); until then, the first token of ``TREELINE_CLUSTER_TOKEN`` is sent (what
``treeline up`` gives its root and its cluster).
"""

from __future__ import annotations

import logging
import os
import threading
from abc import ABC, abstractmethod
from typing import Any
from urllib.parse import quote

from root_orchestrator.auth.settings import CLUSTER_TOKEN_ENV
from treeline_common.errors import Unavailable
from treeline_common.http import call_json

log = logging.getLogger(__name__)


class ClusterClient(ABC):
    def remember_token(self, cluster_url: str, token: str) -> None:  # noqa: B027 - optional hook
        """The token the cluster at ``cluster_url`` authenticated with; sent back on calls to it."""

    @abstractmethod
    def deploy(self, cluster_url: str, service_id: str, instance: int, job: dict[str, Any]) -> None:
        """Hand the job to the cluster (``POST {url}/api/service/<service_id>/<instance>``)."""

    @abstractmethod
    def undeploy(self, cluster_url: str, service_id: str, instance: int) -> None:
        """``DELETE {url}/api/service/<service_id>/<instance>``."""

    @abstractmethod
    def plan(self, cluster_url: str, job: dict[str, Any]) -> dict[str, Any]:
        """Dry run: ``POST {url}/api/plan`` with a JobRequest; the cluster plans it over its nodes
        and answers the plan summary without deploying anything."""

    @abstractmethod
    def profile(self, cluster_url: str, request: dict[str, Any]) -> dict[str, Any]:
        """``POST {url}/api/models/profile`` with ``{name, version, sha256, device_class}``: the
        cluster re-measures the model's op times in the background (202) and PUTs them back."""

    def nodes(self, cluster_url: str) -> list[dict[str, Any]]:
        """The cluster's nodes with their latest telemetry (``GET /api/nodes``; the web UI's fleet).
        Not every client reads clusters: the default raises Unavailable."""
        raise Unavailable(f"{type(self).__name__} does not read nodes of {cluster_url}")

    def deployment(self, cluster_url: str, service_id: str, instance: int) -> dict[str, Any]:
        """The cluster's view of one deployment, with per-stage measured figures
        (``GET /api/deployments/<service_id>/<instance>``); the default raises Unavailable."""
        raise Unavailable(f"{type(self).__name__} does not read deployments of {cluster_url}")


def _job_url(cluster_url: str, service_id: str, instance: int) -> str:
    return f"{cluster_url.rstrip('/')}/api/service/{quote(service_id, safe='')}/{int(instance)}"


class HttpClusterClient(ClusterClient):
    """requests-based; constructing it does no I/O. ``plan_timeout`` is longer than ``timeout``: a
    dry run downloads the model (once per cluster) and runs the planner before it answers; it
    stays under the CLI's own 120 s, so the operator gets the root's answer, not a timeout."""

    def __init__(self, timeout: float = 10.0, session: Any = None, plan_timeout: float = 90.0,
                 default_token: str | None = None) -> None:
        self.timeout = timeout
        self.plan_timeout = max(plan_timeout, timeout)
        self.session = session
        env = [t.strip() for t in os.environ.get(CLUSTER_TOKEN_ENV, "").split(",") if t.strip()]
        self.default_token = default_token if default_token is not None else (env[0] if env else None)
        self._tokens: dict[str, str] = {}
        self._lock = threading.Lock()

    def remember_token(self, cluster_url: str, token: str) -> None:
        with self._lock:
            self._tokens[cluster_url.rstrip("/")] = token

    def _headers(self, cluster_url: str) -> dict[str, str] | None:
        with self._lock:
            token = self._tokens.get(cluster_url.rstrip("/"), self.default_token)
        return {"Authorization": f"Bearer {token}"} if token else None

    def deploy(self, cluster_url: str, service_id: str, instance: int, job: dict[str, Any]) -> None:
        url = _job_url(cluster_url, service_id, instance)
        log.info("forwarding job %s/%s to %s", service_id, instance, cluster_url)
        call_json("POST", url, json=job, timeout=self.timeout, session=self.session,
                  headers=self._headers(cluster_url))

    def undeploy(self, cluster_url: str, service_id: str, instance: int) -> None:
        url = _job_url(cluster_url, service_id, instance)
        log.info("deleting job %s/%s on %s", service_id, instance, cluster_url)
        call_json("DELETE", url, timeout=self.timeout, session=self.session,
                  headers=self._headers(cluster_url))

    def plan(self, cluster_url: str, job: dict[str, Any]) -> dict[str, Any]:
        log.info("asking %s to plan %s (dry run)", cluster_url, job.get("service_id"))
        return _object(call_json("POST", f"{cluster_url.rstrip('/')}/api/plan", json=job,
                                 timeout=self.plan_timeout, session=self.session,
                                 headers=self._headers(cluster_url)), cluster_url)

    def profile(self, cluster_url: str, request: dict[str, Any]) -> dict[str, Any]:
        log.info("asking %s to profile %s v%s", cluster_url, request.get("name"), request.get("version"))
        return _object(call_json("POST", f"{cluster_url.rstrip('/')}/api/models/profile", json=request,
                                 timeout=self.timeout, session=self.session,
                                 headers=self._headers(cluster_url)), cluster_url)

    def nodes(self, cluster_url: str) -> list[dict[str, Any]]:
        url = f"{cluster_url.rstrip('/')}/api/nodes"
        answer = call_json("GET", url, timeout=min(self.timeout, 3.0), session=self.session)
        body = _object(answer, cluster_url)
        found = body.get("nodes")
        if not isinstance(found, list):
            raise Unavailable(f"cluster {cluster_url} answered /api/nodes without a nodes list")
        return [n for n in found if isinstance(n, dict)]

    def deployment(self, cluster_url: str, service_id: str, instance: int) -> dict[str, Any]:
        url = f"{cluster_url.rstrip('/')}/api/deployments/{quote(service_id, safe='')}/{int(instance)}"
        answer = call_json("GET", url, timeout=min(self.timeout, 3.0), session=self.session)
        return _object(answer, cluster_url)


def _object(body: Any, cluster_url: str) -> dict[str, Any]:
    """A cluster's JSON answer, which must be an object; anything else is a broken cluster."""
    if body is None:
        return {}
    if not isinstance(body, dict):
        raise Unavailable(f"cluster {cluster_url} answered {type(body).__name__}, expected a JSON object")
    return body
