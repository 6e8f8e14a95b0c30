"""A thin client of the root orchestrator's REST API, used by the CLI, demo and tests.

Every call goes through :meth:`RootClient.call`, which raises the server's own error class
for an error body (``treeline_common.errors``) and :class:`RootUnreachable` when the root
cannot be reached at all, so callers can tell "the root said no" from "no root there".
The nodes of the system live at the clusters: :meth:`RootClient.nodes` reads the root's
cluster list and then each cluster's ``GET /api/nodes``.

Authentication: every call carries ``Authorization: Bearer <token>``, the first found of: the
``token`` argument, ``treeline --token``, ``$TREELINE_TOKEN``, or what ``treeline login`` saved for
this root URL in the credentials file (``$TREELINE_CREDENTIALS``, default
``~/.config/treeline/credentials.json``, mode 0600; a 401 then refreshes the token once with the
saved refresh token). With none of those, a root on a loopback address is asked to log in as
Oakestra's development default ``Admin``/``Admin`` (kept in memory only): that account exists
only in a root's development mode, so a production root answers 401 and the error says to log in.
"""

from __future__ import annotations

import json
import os
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests

from treeline_cli.model_client import ModelCalls, quote_segment
from treeline_common.errors import NotFound, TreelineError, Unauthorized, Unavailable
from treeline_common.http import json_answer
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


def http_call(method: str, url: str, *, timeout: float = 10.0, what: str = "", raw: bool = False,
              **kwargs: Any) -> Any:
    """One JSON request; the decoded answer (with ``raw``: the body's bytes), the server's error
    class, or RootUnreachable."""
    try:
        response = requests.request(method, url, timeout=timeout, **kwargs)
    except requests.RequestException as exc:
        raise RootUnreachable(f"cannot reach {what or url} ({_short_reason(exc)})") from None
    if raw and response.status_code < 400:
        return response.content
    return json_answer(response, method, url)


TOKEN_ENV = "TREELINE_TOKEN"
CREDENTIALS_ENV = "TREELINE_CREDENTIALS"
DEV_ACCOUNT = ("Admin", "Admin")  # Oakestra's default; only a development-mode root has it
_LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")

token_override: str | None = None  # `treeline --token`; set per invocation by treeline_cli.main


def credentials_path() -> Path:
    configured = os.environ.get(CREDENTIALS_ENV, "").strip()
    if configured:
        return Path(configured).expanduser()
    return Path.home() / ".config" / "treeline" / "credentials.json"


def _read_credentials() -> dict[str, Any]:
    try:
        data = json.loads(credentials_path().read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def load_credentials(root_url: str) -> dict[str, Any] | None:
    """What ``treeline login`` saved for ``root_url`` (``{username, token, refresh_token}``), or None."""
    entry = _read_credentials().get(root_url.rstrip("/"))
    return entry if isinstance(entry, dict) and entry.get("token") else None


def save_credentials(root_url: str, entry: dict[str, Any] | None) -> Path:
    """Store (or with None, forget) the credentials of ``root_url``; the file is private (0600)."""
    data = _read_credentials()
    if entry is None:
        data.pop(root_url.rstrip("/"), None)
    else:
        data[root_url.rstrip("/")] = entry
    path = credentials_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(data, out, indent=2)
    os.replace(tmp, path)
    return path


_PUBLIC_PATHS = ("/api/health", "/api/openapi.json", "/api/docs", "/api/auth/")


def login(root_url: str, username: str, password: str, timeout: float = 10.0) -> dict[str, str]:
    """``POST /api/auth/login`` -> ``{token, refresh_token}`` (the server's 401 as its error class)."""
    return dict(http_call("POST", f"{root_url.rstrip('/')}/api/auth/login", timeout=timeout,
                          json={"username": username, "password": password}, what=f"the root at {root_url}"))


def items(body: Any, key: str) -> list[Any]:
    """A listing as Oakestra answers it (a JSON array) or as older roots did (``{key: [...]}``)."""
    if isinstance(body, dict):
        return list(body.get(key) or [])
    return list(body or [])


class RootClient(ModelCalls):
    """The root's REST API; the model registry's calls come from :class:`ModelCalls`."""

    def __init__(self, root_url: str, timeout: float = 10.0, token: str | None = None) -> None:
        self.root_url = root_url.rstrip("/")
        self.timeout = timeout
        self._routes: set[tuple[str, str]] | None = None
        self._token = token
        self._refresh: str | None = None
        self._fixed = token is not None  # a token given by the caller is used as is
        self._resolved = token is not None

    def _url(self, path: str) -> str:
        return f"{self.root_url}{path}"

    def _resolve_token(self) -> None:
        if self._resolved:
            return
        self._resolved = True
        given = token_override or os.environ.get(TOKEN_ENV, "").strip() or None
        if given:
            self._token, self._fixed = given, True
            return
        saved = load_credentials(self.root_url)
        if saved is not None:
            self._token, self._refresh = str(saved["token"]), saved.get("refresh_token")

    def _reauthenticate(self) -> bool:
        """After a 401: refresh a saved token, or log in as the development default on loopback."""
        if self._fixed:
            return False
        if self._refresh:
            refresh, self._refresh = self._refresh, None  # once
            try:
                body = http_call("POST", self._url("/api/auth/refresh"), timeout=self.timeout,
                                 headers={"Authorization": f"Bearer {refresh}"},
                                 what=f"the root at {self.root_url}")
            except TreelineError:
                return False
            self._token = str(body["token"])
            saved = load_credentials(self.root_url) or {}
            save_credentials(self.root_url, {**saved, "token": self._token, "refresh_token": refresh})
            self._refresh = refresh
            return True
        if self._token is None and urllib.parse.urlparse(self.root_url).hostname in _LOOPBACK_HOSTS:
            self._fixed = True  # one try
            try:
                self._token = login(self.root_url, *DEV_ACCOUNT, timeout=self.timeout)["token"]
            except TreelineError:
                return False
            return True
        return False

    def _send(self, method: str, path: str, headers: dict[str, str], kwargs: dict[str, Any]) -> Any:
        if self._token:
            headers = {**headers, "Authorization": f"Bearer {self._token}"}
        return http_call(method, self._url(path), what=f"the root at {self.root_url}", headers=headers,
                         **kwargs)

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        """``method path`` on the root, authenticated; see :func:`http_call`. A 401 is retried once
        after :meth:`_reauthenticate`; the last 401 says how to log in."""
        kwargs.setdefault("timeout", self.timeout)
        headers = dict(kwargs.pop("headers", None) or {})
        self._resolve_token()
        if self._token is None and not path.startswith(_PUBLIC_PATHS):
            # no token at all: log in first (the development account on a loopback root) rather
            # than call anonymously, which a development root admits on some routes, with a warning
            self._reauthenticate()
        try:
            return self._send(method, path, headers, kwargs)
        except Unauthorized as exc:
            failure = exc
        if self._reauthenticate():
            try:
                return self._send(method, path, headers, kwargs)
            except Unauthorized as exc:
                failure = exc
        failure.message += " (log in with `treeline login`, or pass --token)"
        failure.args = (failure.message,)
        raise failure

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

    def open_stream(self, path: str) -> requests.Response:
        """``GET path`` as a streamed response (caller closes it), authenticated like :meth:`call`;
        an error answer raises its class, no answer RootUnreachable."""
        self._resolve_token()
        if self._token is None:
            self._reauthenticate()
        for attempt in range(2):
            headers = {"Authorization": f"Bearer {self._token}"} if self._token else {}
            try:
                response = requests.get(self._url(path), headers=headers, stream=True, timeout=self.timeout)
            except requests.RequestException as exc:
                raise RootUnreachable(f"cannot reach the root at {self.root_url} "
                                      f"({_short_reason(exc)})") from None
            if response.status_code == 401 and attempt == 0 and self._reauthenticate():
                response.close()
                continue
            if response.status_code >= 400:
                with response:
                    json_answer(response, "GET", self._url(path))
            return response
        raise RootUnreachable(f"the root at {self.root_url} refused the token twice")

    # ---------------------------------------------------------------- applications and services

    def submit_sla(self, sla: dict[str, Any]) -> list[dict[str, Any]]:
        """Create the applications of an SLA (always new ones); returns them with their service ids."""
        return items(self.call("POST", "/api/application/", json=sla), "applications")

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
        return items(self.call("GET", f"/api/services/{query}"), "services")

    def service_events(self, service_id: str) -> list[dict[str, Any]]:
        return list(self.call("GET", f"/api/service/{_q(service_id)}/events").get("events") or [])

    def delete_service(self, service_id: str) -> dict[str, Any]:
        return dict(self.call("DELETE", f"/api/service/{_q(service_id)}", timeout=60) or {})

    def applications(self) -> list[dict[str, Any]]:
        return items(self.call("GET", "/api/applications/"), "applications")

    def application(self, application_id: str) -> dict[str, Any]:
        return dict(self.call("GET", f"/api/application/{_q(application_id)}"))

    def delete_application(self, application_id: str) -> dict[str, Any]:
        return dict(self.call("DELETE", f"/api/application/{_q(application_id)}", timeout=60) or {})

    # ---------------------------------------------------------------- clusters and nodes

    def clusters(self) -> list[dict[str, Any]]:
        return items(self.call("GET", "/api/clusters/"), "clusters")

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

        A training service (``ml-training``) that already finished (DELETED: its job ended and its
        result is registered) also ends the wait. ``on_change`` sees the service document each
        time its status or detail changes, which is how ``treeline deploy`` shows progress.
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
            if state[0] == JobStatus.DELETED.value and doc.get("virtualization") == "ml-training":
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


_q = quote_segment
