"""The root's store interfaces: what every backend MUST guarantee, written once.

Each interface is a role noun with one backend per technology (``Sqlite*``, ``Mongo*``); the
contract tests in ``tests/contract/test_root_stores.py`` run the same suite on every backend.
Documents cross the boundary as plain JSON-able dicts without backend fields (no Mongo ``_id``).
Failures are :mod:`treeline_common.errors` classes, so the REST layer maps them without
knowing which backend raised them.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any

from treeline_common.errors import InvalidInput, NotFound

CHUNK = 1 << 16
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
ALIAS_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,63}$")
RESERVED_ALIASES = frozenset({"latest"})
# Fields of an application doc the store owns: ApplicationStore.update_application never sets them.
APPLICATION_KEPT_FIELDS = frozenset({"applicationID", "userId", "microservices"})

Data = bytes | bytearray | memoryview | IO[bytes]


def new_id() -> str:
    """A 24-hex-digit id, the shape of Oakestra's Mongo ObjectIds, on every backend."""
    return uuid.uuid4().hex[:24]


def check_sha256(sha256: str, path: str = "sha256") -> str:
    if not isinstance(sha256, str) or not SHA256_RE.match(sha256):
        raise InvalidInput("not a sha256 digest",
                           [{"path": path, "message": "expected 64 lowercase hex digits"}])
    return sha256


def check_model_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise InvalidInput("invalid model name",
                           [{"path": "name", "message": f"must match {NAME_RE.pattern}"}])
    return name


def check_alias(alias: str) -> str:
    """Aliases must not look like a version number or ``latest``, else refs would be ambiguous."""
    if not isinstance(alias, str) or not ALIAS_RE.match(alias) or alias in RESERVED_ALIASES:
        raise InvalidInput("invalid alias", [
            {"path": "alias", "message": f"must match {ALIAS_RE.pattern} and not be 'latest'"}])
    return alias


def parse_ref(ref: int | str) -> int | str:
    """``3``/``"3"`` -> 3; ``"latest"`` and aliases stay strings."""
    if isinstance(ref, bool):
        raise InvalidInput("invalid version reference", [{"path": "version", "message": "not a version"}])
    if isinstance(ref, int):
        return ref
    if isinstance(ref, str) and ref.isdigit():
        return int(ref)
    if isinstance(ref, str) and ref:
        return ref
    raise InvalidInput("invalid version reference", [{"path": "version", "message": "empty"}])


def iter_chunks(data: Data) -> Iterator[bytes]:
    """Bytes or a readable binary stream, as chunks, so large artifacts never sit in memory twice."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        view = memoryview(data)
        for start in range(0, len(view), CHUNK):
            yield bytes(view[start:start + CHUNK])
        return
    while True:
        chunk = data.read(CHUNK)
        if not chunk:
            return
        yield chunk


@dataclass(frozen=True)
class PutResult:
    sha256: str
    size: int
    created: bool  # False when the artifact was already stored (put is idempotent)


class ArtifactStore(ABC):
    """Content-addressed bytes (whole models and partitions), keyed by their sha256.

    ``put`` MUST be idempotent and atomic: a reader never sees a partial artifact, and the
    same bytes stored twice are stored once. With ``expected_sha256`` a mismatch raises
    IntegrityError and stores nothing.
    """

    @abstractmethod
    def put(self, data: Data, expected_sha256: str | None = None) -> PutResult: ...

    @abstractmethod
    def open(self, sha256: str) -> IO[bytes]:
        """A readable binary stream (caller closes it); NotFound if absent."""

    def get(self, sha256: str) -> bytes:
        with self.open(sha256) as stream:
            return stream.read()

    def iter_bytes(self, sha256: str) -> Iterator[bytes]:
        """Chunks of the artifact; opens eagerly so NotFound is raised before streaming starts."""
        stream = self.open(sha256)

        def _gen() -> Iterator[bytes]:
            with stream:
                yield from iter_chunks(stream)

        return _gen()

    @abstractmethod
    def exists(self, sha256: str) -> bool: ...

    @abstractmethod
    def size(self, sha256: str) -> int:
        """Size in bytes; NotFound if absent."""

    @abstractmethod
    def delete(self, sha256: str) -> bool:
        """True if something was deleted."""


class ModelRegistry(ABC):
    """Named models with immutable, monotonically numbered versions (1, 2, ...) and movable aliases.

    A version doc is ``{name, version, sha256, size, format, signature, created_at, description,
    aliases}``; ``aliases`` is computed from the model's alias map at read time, so moving an
    alias is one atomic write. Version numbers are never reused, even under concurrent creates.
    """

    @abstractmethod
    def create_version(self, name: str, sha256: str, size: int, signature: dict[str, Any],
                       description: str = "", *, fmt: str = "onnx",
                       created_at: float = 0.0) -> dict[str, Any]: ...

    @abstractmethod
    def get_version(self, name: str, ref: int | str) -> dict[str, Any]:
        """``ref``: an int version, ``"latest"`` or an alias. NotFound names ``name`` or ``version``."""

    @abstractmethod
    def list_versions(self, name: str) -> list[dict[str, Any]]: ...

    @abstractmethod
    def list_models(self) -> list[dict[str, Any]]:
        """``[{name, latest_version, aliases: {alias: version}}]`` sorted by name."""

    @abstractmethod
    def set_alias(self, name: str, alias: str, version: int) -> dict[str, Any]:
        """Point ``alias`` at an existing version (moving it if set); returns that version doc."""

    # Op-time profiles (docs/contracts.md, "Scheduler v2 additions"): one document per
    # (model, version, device class); a put replaces the previous one (last write wins).

    @abstractmethod
    def put_profile(self, name: str, version: int, device_class: str, doc: dict[str, Any]) -> dict[str, Any]:
        """Store ``doc`` for an existing version; NotFound names the model or version. Returns it."""

    @abstractmethod
    def get_profile(self, name: str, version: int, device_class: str) -> dict[str, Any]:
        """The stored profile; NotFound (path ``device_class``) if that class has none."""

    @abstractmethod
    def list_profiles(self, name: str, version: int) -> dict[str, dict[str, Any]]:
        """``{device_class: profile doc}`` of one version (empty when none)."""

    @abstractmethod
    def delete_profiles(self, name: str, version: int, device_class: str | None = None) -> list[str]:
        """Delete the version's profiles (every class, or only ``device_class``); returns the classes
        deleted, sorted. Idempotent: nothing stored is ``[]``. NotFound names the model or version."""

    @abstractmethod
    def delete_model(self, name: str) -> list[dict[str, Any]]:
        """Delete the model with every version, alias and profile; returns the deleted version docs
        (oldest first). NotFound (path ``model.name``) if there is no such model. The name is free
        again afterwards: a new upload under it starts at version 1 (as in MLflow). Artifacts are
        left alone (content-addressed, possibly shared); the caller decides which to drop."""


class ApplicationStore(ABC):
    """Applications and their services (one per SLA microservice).

    Services carry an optimistic ``revision`` counter: ``update_service(..., expected_revision=r)``
    raises Conflict unless the stored revision is still ``r``, so concurrent writers (an instance
    POST and a cluster push) never silently overwrite each other.
    """

    @abstractmethod
    def create_application(self, app: dict[str, Any], services: list[dict[str, Any]],
                           user: str) -> dict[str, Any]:
        """Store ``app`` (an SLA application) and its service docs; assigns ``applicationID`` and each
        ``service_id``; returns the application doc whose ``microservices`` lists the service ids."""

    @abstractmethod
    def get_application(self, application_id: str) -> dict[str, Any]: ...

    @abstractmethod
    def find_applications(self, user: str, name: str) -> list[dict[str, Any]]:
        """The applications of ``user`` named ``name`` (``application_name``), oldest first; the key
        ``POST /api/apply`` is idempotent by. Empty when none."""

    @abstractmethod
    def update_application(self, application_id: str, fields: dict[str, Any]) -> dict[str, Any]:
        """Set top-level ``fields`` of the application (its ``applicationID``, ``userId`` and
        ``microservices`` are kept); returns the new doc. NotFound if absent."""

    @abstractmethod
    def add_service(self, application_id: str, service: dict[str, Any]) -> dict[str, Any]:
        """Store one more service doc under an existing application (id assigned, ``revision`` 1,
        appended to the application's ``microservices``); returns it. NotFound if the application
        is absent, and then nothing is stored."""

    @abstractmethod
    def list_applications(self, user: str | None = None) -> list[dict[str, Any]]: ...

    @abstractmethod
    def delete_application(self, application_id: str) -> list[dict[str, Any]]:
        """Delete the application and its services; returns the deleted service docs."""

    @abstractmethod
    def get_service(self, service_id: str) -> dict[str, Any]: ...

    @abstractmethod
    def list_services(self, application_id: str | None = None) -> list[dict[str, Any]]: ...

    @abstractmethod
    def update_service(self, service_id: str, fields: dict[str, Any],
                       expected_revision: int | None = None) -> dict[str, Any]:
        """Set top-level ``fields``, bump ``revision``; returns the new doc."""

    @abstractmethod
    def delete_service(self, service_id: str) -> dict[str, Any]:
        """Delete the service (and its id from its application); returns the deleted doc."""


class ClusterStore(ABC):
    """Registered cluster orchestrators and the last aggregate each pushed."""

    @abstractmethod
    def register(self, name: str, location: str, url: str, now: float) -> tuple[dict[str, Any], bool]:
        """Idempotent by name: same ``cluster_id`` on re-registration (url/location refreshed).
        Returns ``(cluster doc, created)``."""

    @abstractmethod
    def update_aggregate(self, cluster_id: str, aggregate: dict[str, Any], now: float) -> dict[str, Any]: ...

    @abstractmethod
    def get(self, cluster_id: str) -> dict[str, Any]: ...

    @abstractmethod
    def list(self) -> list[dict[str, Any]]: ...


def resolve_version(name: str, ref: int | str, last: int, aliases: dict[str, int]) -> int:
    """The version number ``ref`` names, given the model's last version and alias map."""
    if isinstance(ref, int):
        return ref
    if ref == "latest":
        return last
    if ref in aliases:
        return int(aliases[ref])
    raise not_found("version", f"{name}:{ref}", "model.version")


def with_aliases(doc: dict[str, Any], aliases: dict[str, int]) -> dict[str, Any]:
    return {**doc, "aliases": sorted(a for a, v in aliases.items() if v == doc["version"])}


def new_cluster_doc(cluster_id: str, name: str, location: str, url: str, now: float) -> dict[str, Any]:
    return {"cluster_id": cluster_id, "cluster_name": name, "cluster_location": location, "url": url,
            "registered_at": now, "last_push": None, "aggregate": {}}


def not_found(kind: str, ident: str, path: str) -> NotFound:
    return NotFound(f"{kind} {ident!r} not found", [{"path": path, "message": f"no {kind} {ident!r}"}])


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
