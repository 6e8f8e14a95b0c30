"""The model registry's calls of :class:`~treeline_cli.root_client.RootClient` (a mixin, so the
client stays one object): register (streamed), list, show, update (the PATCH contract of
:mod:`treeline_common.registry`), aliases with compare-and-set, delete, download (streamed to disk,
sha256 checked), profiles.
"""

from __future__ import annotations

import hashlib
import os
import urllib.parse
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import requests

from treeline_common.errors import IntegrityError, Unavailable

NO_EXPECTATION = object()  # set_model_alias without ``expected``: an unconditional move
DOWNLOAD_CHUNK = 1 << 16


def quote_segment(part: str) -> str:
    """One URL path segment, quoted."""
    return urllib.parse.quote(part, safe="")


_q = quote_segment


class ModelCalls:
    """Registry calls; the host class provides :meth:`call`, :meth:`_new_route` and :meth:`open_stream`."""

    timeout: float

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        raise NotImplementedError

    def _new_route(self, method: str, path: str, openapi_path: str, **kwargs: Any) -> Any:
        raise NotImplementedError

    def open_stream(self, path: str) -> requests.Response:
        raise NotImplementedError

    def register_model(self, name: str, onnx_bytes: bytes | Iterable[bytes], description: str = "",
                       alias: str | None = None,
                       content_type: str = "application/octet-stream") -> dict[str, Any]:
        """Upload ONNX bytes (or, with an archive ``content_type``, a tar/zip of a model and its
        external data) as a new version of ``name``; returns the version document. An iterable of
        chunks is streamed (chunked transfer encoding), never held in memory whole; a body over
        the root's limit raises PayloadTooLarge (413)."""
        query = {"description": description, **({"alias": alias} if alias else {})}
        return dict(self.call(
            "POST", f"/api/models/{_q(name)}/versions?{urllib.parse.urlencode(query)}",
            data=onnx_bytes, headers={"Content-Type": content_type}, timeout=max(self.timeout, 60)))

    def update_model_version(self, name: str, ref: str | int, **fields: Any) -> dict[str, Any]:
        """``PATCH /api/models/<name>/versions/<ref>`` with ``fields`` (``description``, ``tags``,
        ``lineage``, ``metrics``: :class:`treeline_common.registry.VersionUpdate`); the new version
        document. InvalidInput naming each bad field, Conflict when the lineage is already set."""
        return dict(self.call("PATCH", f"/api/models/{_q(name)}/versions/{_q(str(ref))}", json=fields))

    def set_model_alias(self, name: str, alias: str, version: int,
                        expected: int | object | None = NO_EXPECTATION) -> dict[str, Any]:
        """Point ``alias`` at ``version``; with ``expected`` (a version, or None: the alias must not
        exist) only if it still points there, else Conflict naming the current version."""
        body: dict[str, Any] = {"version": version}
        if expected is not NO_EXPECTATION:
            body["expected"] = expected
        return dict(self.call("PUT", f"/api/models/{_q(name)}/aliases/{_q(alias)}", json=body))

    def delete_model_alias(self, name: str, alias: str, expected: int | None = None) -> dict[str, Any]:
        query = f"?expected={expected}" if expected is not None else ""
        return dict(self.call("DELETE", f"/api/models/{_q(name)}/aliases/{_q(alias)}{query}"))

    def model_aliases(self, name: str) -> dict[str, Any]:
        """``{name, aliases: {alias: version}, events: [{alias, version, previous, by, at}]}``."""
        return dict(self.call("GET", f"/api/models/{_q(name)}/aliases"))

    def delete_model_version(self, name: str, ref: str | int) -> dict[str, Any]:
        """Delete one version (409 naming the services that use it)."""
        return dict(self.call("DELETE", f"/api/models/{_q(name)}/versions/{_q(str(ref))}", timeout=60))

    def download_model(self, name: str, ref: str | int, dest: Path,
                       on_progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
        """Stream version ``ref``'s ONNX bytes to ``dest`` (through ``dest.part``, renamed when
        complete), checking their sha256 against the version's: IntegrityError (and nothing at
        ``dest``) when they differ. ``on_progress(done, total)`` after each chunk.
        Returns ``{name, version, sha256, size, path}``."""
        version = self.model_version(name, ref)
        response = self.open_stream(f"/api/models/{_q(name)}/versions/{version['version']}/artifact")
        total = int(response.headers.get("Content-Length") or version.get("size") or 0)
        digest, done = hashlib.sha256(), 0
        partial = dest.with_name(dest.name + ".part")
        try:
            with response, partial.open("wb") as out:
                for chunk in response.iter_content(DOWNLOAD_CHUNK):
                    out.write(chunk)
                    digest.update(chunk)
                    done += len(chunk)
                    if on_progress is not None:
                        on_progress(done, total)
        except requests.RequestException as exc:
            partial.unlink(missing_ok=True)
            raise Unavailable(f"download of {name}:{version['version']} broke off "
                                  f"({type(exc).__name__})") from None
        if digest.hexdigest() != version["sha256"]:
            partial.unlink(missing_ok=True)
            raise IntegrityError(f"downloaded bytes hash to {digest.hexdigest()}, not {version['sha256']}",
                                 [{"path": "sha256", "message": "download damaged; try again"}])
        os.replace(partial, dest)
        return {"name": name, "version": version["version"], "sha256": version["sha256"], "size": done,
                "path": str(dest)}

    def artifact(self, sha256: str) -> bytes:
        """The bytes of a content-addressed artifact (a model or a partition), by digest."""
        return bytes(self.call("GET", f"/api/artifacts/{_q(sha256)}", raw=True))

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
