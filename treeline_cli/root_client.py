"""A thin client of the root orchestrator's REST API, used by the CLI, demo and tests."""

from __future__ import annotations

import time
import urllib.parse
from collections.abc import Callable
from typing import Any

from treeline_common.errors import NotFound, TreelineError
from treeline_common.http import call_json
from treeline_common.jobs import JobStatus


class DeploymentFailed(TreelineError):
    code = "DEPLOYMENT_FAILED"


class RootClient:
    def __init__(self, root_url: str) -> None:
        self.root_url = root_url.rstrip("/")

    def _url(self, path: str) -> str:
        return f"{self.root_url}{path}"

    def register_model(self, name: str, onnx_bytes: bytes, description: str = "") -> dict[str, Any]:
        """Upload ONNX bytes as a new version of ``name``; returns the version document."""
        return call_json(
            "POST",
            self._url(f"/api/models/{name}/versions?{urllib.parse.urlencode({'description': description})}"),
            data=onnx_bytes,
            headers={"Content-Type": "application/octet-stream"},
            timeout=60,
        )

    def submit_sla(self, sla: dict[str, Any]) -> list[dict[str, Any]]:
        """Create the applications of an SLA; returns them with their service ids."""
        return call_json("POST", self._url("/api/application/"), json=sla)["applications"]

    def deploy_service(self, service_id: str) -> dict[str, Any]:
        return call_json("POST", self._url(f"/api/service/{service_id}/instance"), json={})

    def service(self, service_id: str) -> dict[str, Any]:
        return call_json("GET", self._url(f"/api/service/{service_id}"))

    def applications(self) -> list[dict[str, Any]]:
        body = call_json("GET", self._url("/api/applications/"))
        return body["applications"] if isinstance(body, dict) else body

    def wait_deployed(
        self,
        service_id: str,
        timeout: float = 180.0,
        on_change: Callable[[dict[str, Any]], None] | None = None,
        interval: float = 0.25,
    ) -> dict[str, Any]:
        """Poll the service until RUNNING; raise DeploymentFailed with the reason on FAILED.

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
                raise DeploymentFailed(f"service {service_id} failed: {state[1] or 'no reason given'}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"service {service_id} still {state[0]} after {timeout:.0f}s ({state[1]})")
            time.sleep(interval)

    def find_service(self, app: str, service_name: str | None = None) -> dict[str, Any]:
        """The ML service of an application given by name or id (or a service id itself)."""
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
