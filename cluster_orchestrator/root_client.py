"""The cluster's calls to the root orchestrator, all through one wrapper (treeline_common.http).

Why one class: every outbound call (register, push, artifact upload, model download)
shares the base URL, the timeout, the credentials and the error mapping, and tests replace
the root with a small Flask app speaking the same paths.

Credentials: the cluster token (``--root-token`` / ``TREELINE_ROOT_TOKEN``) goes on every call
to the root as ``Authorization: Bearer <token>`` (never to another host: a download URL
elsewhere gets no token). Without one, calls go unauthenticated, which only a
development-mode root on loopback accepts.
"""

from __future__ import annotations

import hashlib
import logging
import os
from typing import Any

import requests

from treeline_common.errors import IntegrityError, NotFound, Unavailable
from treeline_common.http import call_json

log = logging.getLogger(__name__)

ROOT_TOKEN_ENV = "TREELINE_ROOT_TOKEN"


class RootClient:
    def __init__(self, root_url: str, timeout: float = 30.0, token: str | None = None) -> None:
        self.root_url = root_url.rstrip("/")
        self.timeout = timeout
        self._session = requests.Session()
        self.set_token(token if token is not None else os.environ.get(ROOT_TOKEN_ENV))

    def set_token(self, token: str | None) -> None:
        """Send ``token`` (a cluster token) on every later call; None or empty: no credentials."""
        self._auth = {"Authorization": f"Bearer {token.strip()}"} if token and token.strip() else {}

    def _headers(self, url: str, extra: dict[str, str] | None = None) -> dict[str, str]:
        """``extra`` plus the token when ``url`` is on the root."""
        on_root = url == self.root_url or url.startswith(self.root_url + "/")
        return {**(extra or {}), **(self._auth if on_root else {})}

    def register_cluster(self, name: str, location: str, url: str) -> str:
        """``POST /api/clusters/register``; the root answers the same id for the same name."""
        target = f"{self.root_url}/api/clusters/register"
        body = call_json("POST", target,
                         json={"cluster_name": name, "cluster_location": location, "url": url},
                         headers=self._headers(target), timeout=self.timeout, session=self._session)
        cluster_id = (body or {}).get("cluster_id")
        if not cluster_id:
            raise Unavailable(f"root answered registration without cluster_id: {body!r}")
        return str(cluster_id)

    def push_information(self, cluster_id: str, body: dict[str, Any]) -> Any:
        """``POST /api/information/<cluster_id>`` with ``{aggregate, jobs}``; the root's answer
        (``{updated, ignored, release}``)."""
        target = f"{self.root_url}/api/information/{cluster_id}"
        return call_json("POST", target, json=body, headers=self._headers(target), timeout=self.timeout,
                  session=self._session)

    def put_artifact(self, sha256: str, data: bytes) -> None:
        """``PUT /api/artifacts/<sha256>``; the root checks the digest (422 when it differs)."""
        target = f"{self.root_url}/api/artifacts/{sha256}"
        headers = self._headers(target, {"Content-Type": "application/octet-stream"})
        call_json("PUT", target, data=data, headers=headers, timeout=self.timeout, session=self._session)

    def download(self, url: str, expected_sha256: str) -> bytes:
        """GET ``url`` and return the bytes, raising IntegrityError when the digest differs."""
        try:
            response = self._session.get(url, headers=self._headers(url), timeout=self.timeout)
        except requests.RequestException as exc:
            raise Unavailable(f"GET {url}: {exc}") from None
        if response.status_code == 404:
            raise NotFound(f"GET {url}: the root has no such artifact",
                           [{"path": "model.sha256", "message": "no artifact with this digest at the root"}])
        if response.status_code >= 400:
            raise Unavailable(f"GET {url}: HTTP {response.status_code}")
        data = response.content
        digest = hashlib.sha256(data).hexdigest()
        if digest != expected_sha256.lower():
            raise IntegrityError(f"model artifact sha256 {digest} != expected {expected_sha256}")
        return data

    def model_profiles(self, name: str, version: Any) -> dict[str, dict[str, Any]]:
        """Stored per-device-class op profiles of a model version (``{}`` when none)."""
        target = f"{self.root_url}/api/models/{name}/versions/{version}/profiles"
        body = call_json("GET", target, headers=self._headers(target), timeout=self.timeout,
                         session=self._session)
        return dict((body or {}).get("profiles") or {})

    def put_model_profile(self, name: str, version: Any, device_class: str, profile: dict[str, Any]) -> None:
        """Keep a measured profile with the model version at the root, for later deployments."""
        target = f"{self.root_url}/api/models/{name}/versions/{version}/profiles/{device_class}"
        call_json("PUT", target, json=profile, headers=self._headers(target), timeout=self.timeout,
                  session=self._session)

    def put_partition(self, name: str, version: Any, sha256: str, record: dict[str, Any]) -> None:
        """Record a partition of a model version at the root (a ``treeline_common.registry``
        ``PartitionRecord``)."""
        target = f"{self.root_url}/api/models/{name}/versions/{version}/partitions/{sha256}"
        call_json("PUT", target, json=record, headers=self._headers(target), timeout=self.timeout,
                  session=self._session)

    def post_training_result(self, service_id: str, instance: int, name: str, onnx: bytes,
                             lineage: dict[str, Any], bytes_per_client_round: dict[str, list[int]]) -> Any:
        """A trained model to the root: its bytes (``PUT /api/artifacts``), then ``POST
        /api/training/<service_id>/<instance>/result``; the registered version doc."""
        sha256 = hashlib.sha256(onnx).hexdigest()
        self.put_artifact(sha256, onnx)
        target = f"{self.root_url}/api/training/{service_id}/{instance}/result"
        return call_json("POST", target, json={"name": name, "sha256": sha256, "lineage": lineage,
                                               "bytes_per_client_round": bytes_per_client_round},
                         headers=self._headers(target), timeout=self.timeout, session=self._session)

    def training_aggregator(self, service_id: str, instance: int) -> str:
        """``GET /api/training/<service_id>/<instance>/aggregator``: the ``host:port`` of a
        hierarchical job's root aggregator; NotFound while it has not started."""
        target = f"{self.root_url}/api/training/{service_id}/{instance}/aggregator"
        body = call_json("GET", target, headers=self._headers(target), timeout=self.timeout,
                         session=self._session)
        return str((body or {}).get("address") or "")

    def close(self) -> None:
        self._session.close()
