"""A thin client of the root orchestrator's REST API, used by the CLI, demo and tests.

Every call goes through :meth:`RootClient.call`, which raises the server's own error class
for an error body (``treeline_common.errors``) and :class:`RootUnreachable` when the root
cannot be reached at all, so callers can tell "the root said no" from "no root there".
The nodes of the system live at the clusters: :meth:`RootClient.nodes` reads the root's
cluster list and then each cluster's ``GET /api/nodes``.
"""

from __future__ import annotations

import time
import urllib.parse
from collections.abc import Callable
from typing import Any

import requests

from treeline_common.errors import NotFound, TreelineError, Unavailable, from_body
from treeline_common.jobs import JobStatus


class DeploymentFailed(TreelineError):
    """A service ended FAILED; ``service`` is its last document (placement, explanation, detail)."""

    code = "DEPLOYMENT_FAILED"

    def __init__(self, message: str, details: list[dict[str, Any]] | None = None,
                 service: dict[str, Any] | None = None) -> None:
        super().__init__(message, details)
        self.service = service or {}


class RootUnreachable(Unavailable):
    """Nothing answered at the root's URL (refused, timed out, not HTTP)."""


class UnsupportedByRoot(TreelineError):
    """The root answering at the URL has no such route (an older root)."""

    code = "UNSUPPORTED"


def _short_reason(exc: requests.RequestException) -> str:
    if isinstance(exc, requests.ConnectionError) and "refused" in str(exc).lower():
        return "connection refused"
    if isinstance(exc, requests.Timeout):
        return "timed out"
    return type(exc).__name__


def http_call(method: str, url: str, *, timeout: float = 10.0, what: str = "", **kwargs: Any) -> Any:
    """One JSON request; the decoded answer, the server's error class, or RootUnreachable."""
    try:
        response = requests.request(method, url, timeout=timeout, **kwargs)
    except requests.RequestException as exc:
        raise RootUnreachable(f"cannot reach {what or url} ({_short_reason(exc)})") from None
    if response.status_code >= 400:
        try:
            body = response.json()
        except ValueError:
            body = None
        raise from_body(body, f"{method} {url}: HTTP {response.status_code}")
    if not response.content:
        return None
    try:
        return response.json()
    except ValueError:
        raise TreelineError(f"{method} {url}: the answer is not JSON") from None


class RootClient:
    def __init__(self, root_url: str, timeout: float = 10.0) -> None:
        self.root_url = root_url.rstrip("/")
        self.timeout = timeout
        self._routes: set[tuple[str, str]] | None = None

    def _url(self, path: str) -> str:
        return f"{self.root_url}{path}"

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        """``method path`` on the root; see :func:`http_call`."""
        kwargs.setdefault("timeout", self.timeout)
        return http_call(method, self._url(path), what=f"the root at {self.root_url}", **kwargs)

    def supports(self, method: str, path: str) -> bool:
        """Whether the root's OpenAPI document lists ``method path`` (OpenAPI form: ``/api/x/{id}``)."""
        if self._routes is None:
            paths = (self.call("GET", "/api/openapi.json") or {}).get("paths") or {}
            self._routes = {(m.upper(), p) for p, ops in paths.items() for m in ops}
        return (method.upper(), path) in self._routes

    def _new_route(self, method: str, path: str, openapi_path: str, **kwargs: Any) -> Any:
        """Call a route that older roots lack: their 404 becomes UnsupportedByRoot."""
        try:
            return self.call(method, path, **kwargs)
        except NotFound:
            if not self.supports(method, openapi_path):
                raise UnsupportedByRoot(
                    f"the root at {self.root_url} has no {method} {openapi_path}") from None
            raise

    # ---------------------------------------------------------------- system

    def health(self) -> dict[str, Any]:
        return dict(self.call("GET", "/api/health", timeout=min(self.timeout, 3.0)))

    # ---------------------------------------------------------------- models

    def register_model(self, name: str, onnx_bytes: bytes, description: str = "",
                       alias: str | None = None) -> dict[str, Any]:
        """Upload ONNX bytes as a new version of ``name``; returns the version document."""
        query = {"description": description, **({"alias": alias} if alias else {})}
        return dict(self.call(
            "POST", f"/api/models/{_q(name)}/versions?{urllib.parse.urlencode(query)}",
            data=onnx_bytes, headers={"Content-Type": "application/octet-stream"}, timeout=60))

    def models(self) -> list[dict[str, Any]]:
        return list(self.call("GET", "/api/models/")["models"])

    def model_versions(self, name: str) -> list[dict[str, Any]]:
        return list(self.call("GET", f"/api/models/{_q(name)}/versions")["versions"])

    def model_version(self, name: str, ref: str | int = "latest") -> dict[str, Any]:
        return dict(self.call("GET", f"/api/models/{_q(name)}/versions/{_q(str(ref))}"))

    def model_profiles(self, name: str, ref: str | int) -> dict[str, Any]:
        return dict(self.call("GET", f"/api/models/{_q(name)}/versions/{_q(str(ref))}/profiles")
                    .get("profiles") or {})

    def profile_model(self, name: str, ref: str | int, device_class: str | None = None) -> dict[str, Any]:
        """Have a cluster measure the version again (every device class, or one); returns at once with
        ``{name, version, device_classes_cleared, cluster_id, cluster_name}``: the new profiles
        appear in :meth:`model_profiles` when measured."""
        body = {"device_class": device_class} if device_class else {}
        return dict(self._new_route(
            "POST", f"/api/models/{_q(name)}/versions/{_q(str(ref))}/profile",
            "/api/models/{name}/versions/{ref}/profile", json=body, timeout=30) or {})

    def delete_model(self, name: str) -> dict[str, Any]:
        return dict(self._new_route("DELETE", f"/api/models/{_q(name)}", "/api/models/{name}") or {})

    # ---------------------------------------------------------------- applications and services

    def submit_sla(self, sla: dict[str, Any]) -> list[dict[str, Any]]:
        """Create the applications of an SLA (always new ones); returns them with their service ids."""
        return list(self.call("POST", "/api/application/", json=sla)["applications"])

    def apply(self, sla: dict[str, Any]) -> list[dict[str, Any]]:
        """Create or update the SLA's applications, idempotently (by customerID + application_name).

        Each has ``action`` (created, updated, unchanged), ``changes`` and its service ids.
        """
        return list(self._new_route("POST", "/api/apply", "/api/apply", json=sla)["applications"])

    def plan(self, sla: dict[str, Any]) -> list[dict[str, Any]]:
        """Dry run: what the scheduler would do with each service of the SLA; changes nothing."""
        return list(self._new_route("POST", "/api/plan", "/api/plan", json=sla, timeout=120)["services"])

    def deploy_service(self, service_id: str) -> dict[str, Any]:
        return dict(self.call("POST", f"/api/service/{_q(service_id)}/instance", json={}))

    def service(self, service_id: str) -> dict[str, Any]:
        return dict(self.call("GET", f"/api/service/{_q(service_id)}"))

    def services(self, application_id: str | None = None) -> list[dict[str, Any]]:
        query = f"?{urllib.parse.urlencode({'application_id': application_id})}" if application_id else ""
        return list(self.call("GET", f"/api/services/{query}")["services"])

    def service_events(self, service_id: str) -> list[dict[str, Any]]:
        return list(self.call("GET", f"/api/service/{_q(service_id)}/events").get("events") or [])

    def delete_service(self, service_id: str) -> dict[str, Any]:
        return dict(self.call("DELETE", f"/api/service/{_q(service_id)}", timeout=60) or {})

    def applications(self) -> list[dict[str, Any]]:
        body = self.call("GET", "/api/applications/")
        return list(body["applications"] if isinstance(body, dict) else body)

    def application(self, application_id: str) -> dict[str, Any]:
        return dict(self.call("GET", f"/api/application/{_q(application_id)}"))

    def delete_application(self, application_id: str) -> dict[str, Any]:
        return dict(self.call("DELETE", f"/api/application/{_q(application_id)}", timeout=60) or {})

    # ---------------------------------------------------------------- clusters and nodes

    def clusters(self) -> list[dict[str, Any]]:
        return list(self.call("GET", "/api/clusters/")["clusters"])

    def nodes(self) -> tuple[list[dict[str, Any]], list[str]]:
        """Every cluster's nodes (each with ``cluster_id`` and ``cluster_name`` added), and a line
        for each cluster that could not be asked."""
        nodes: list[dict[str, Any]] = []
        problems: list[str] = []
        for cluster in self.clusters():
            name = str(cluster.get("cluster_name") or cluster.get("cluster_id"))
            url = str(cluster.get("url") or "").rstrip("/")
            if not url:
                problems.append(f"cluster {name} has no URL")
                continue
            try:
                body = http_call("GET", f"{url}/api/nodes", timeout=min(self.timeout, 5.0),
                                 what=f"cluster {name} at {url}")
            except TreelineError as exc:
                problems.append(exc.message)
                continue
            for node in body.get("nodes") or []:
                nodes.append({**node, "cluster_id": cluster.get("cluster_id"), "cluster_name": name})
        return nodes, problems

    # ---------------------------------------------------------------- waiting

    def wait_deployed(
        self,
        service_id: str,
        timeout: float = 180.0,
        on_change: Callable[[dict[str, Any]], None] | None = None,
        interval: float = 0.25,
    ) -> dict[str, Any]:
        """Poll the service until RUNNING; raise DeploymentFailed (with the service document) on FAILED.

        ``on_change`` sees the service document each time its status or detail changes,
        which is how ``treeline deploy`` shows progress.
        """
        deadline = time.monotonic() + timeout
        last: tuple[str, str] | None = None
        while True:
            doc = self.service(service_id)
            state = (str(doc.get("status")), str(doc.get("status_detail", "")))
            if state != last and on_change is not None:
                on_change(doc)
            last = state
            if state[0] == JobStatus.RUNNING.value:
                return doc
            if state[0] == JobStatus.FAILED.value:
                raise DeploymentFailed(f"service {service_id} failed: {state[1] or 'no reason given'}",
                                       service=doc)
            if time.monotonic() > deadline:
                raise TimeoutError(f"service {service_id} still {state[0]} after {timeout:.0f}s ({state[1]})")
            time.sleep(interval)

    def find_service(self, app: str, service_name: str | None = None) -> dict[str, Any]:
        """The ML service of an application given by name or id (or a service id itself).

        The first match wins; the CLI resolves names strictly with ``treeline_cli.resolve``.
        """
        for application in self.applications():
            if app not in (application.get("applicationID"), application.get("application_name")):
                continue
            for service_id in application.get("microservices", []):
                doc = self.service(service_id)
                if service_name in (None, doc.get("microservice_name")):
                    return doc
        try:
            return self.service(app)
        except NotFound:
            raise NotFound(f"no application or service named {app!r}") from None


def _q(part: str) -> str:
    """One URL path segment, quoted."""
    return urllib.parse.quote(part, safe="")
