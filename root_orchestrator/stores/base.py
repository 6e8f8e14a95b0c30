"""The root's store interfaces: what every backend MUST guarantee, written once.

Each interface is a role noun with one backend per technology (``Sqlite*``, ``Mongo*``); the
contract tests in ``tests/contract/test_root_stores.py`` run the same suite on every backend.
Documents cross the boundary as plain JSON-able dicts without backend fields (no Mongo ``_id``).
Failures are :mod:`treeline_common.errors` classes, so the REST layer maps them without
knowing which backend raised them.
"""

from __future__ import annotations

import hashlib
import logging
import re
import uuid
from abc import ABC, abstractmethod
from typing import Any

from treeline_common.errors import Conflict, InvalidInput, NotFound
from treeline_common.registry import PartitionRecord, VersionUpdate

log = logging.getLogger(__name__)

CHUNK = 1 << 16
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
ALIAS_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,63}$")
RESERVED_ALIASES = frozenset({"latest"})
# Fields of an application doc the store owns: ApplicationStore.update_application never sets them.
APPLICATION_KEPT_FIELDS = frozenset({"applicationID", "userId", "microservices"})

ALIAS_EVENTS_KEPT = 50  # alias changes kept per model


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


class ModelRegistry(ABC):
    """Named models with immutable, monotonically numbered versions (1, 2, ...) and movable aliases.

    A version doc is ``{name, version, sha256, size, format, signature, created_at, description,
    aliases, owner}``; ``aliases`` and ``owner`` are the model's, read at read time, so moving an
    alias is one atomic write. Version numbers are never reused, even under concurrent creates.

    Every model has one ``owner`` (a user id; ``""`` for models stored before users existed):
    the first version's ``owner`` sets it and it never changes. The store only records and
    checks it; who may see a model is the REST layer's decision.
    """

    @abstractmethod
    def create_version(self, name: str, sha256: str, size: int, signature: dict[str, Any],
                       description: str = "", *, fmt: str = "onnx",
                       created_at: float = 0.0, owner: str | None = None) -> dict[str, Any]:
        """A new version of ``name`` (created with it when new, owned by ``owner`` or ``""``).
        With ``owner`` given, an existing model of another owner raises Conflict (path
        ``model.name``) and stores nothing; ``owner=None`` adds to any model."""

    @abstractmethod
    def get_version(self, name: str, ref: int | str) -> dict[str, Any]:
        """``ref``: an int version, ``"latest"`` or an alias. NotFound names ``name`` or ``version``."""

    @abstractmethod
    def list_versions(self, name: str) -> list[dict[str, Any]]: ...

    @abstractmethod
    def list_models(self) -> list[dict[str, Any]]:
        """``[{name, latest_version, aliases: {alias: version}, owner}]`` sorted by name."""

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

    # The registry's lifecycle (issue 11): metadata, compare-and-set aliases, version delete and
    # partitions.

    @abstractmethod
    def update_version(self, name: str, version: int, update: VersionUpdate) -> dict[str, Any]:
        """Apply ``update`` to version ``version`` atomically (``description`` replaced, ``tags`` and
        ``metrics`` merged by key, a null value deleting the key; ``lineage`` set once: Conflict
        (path ``lineage``) when already set). The lineage's parent must exist (NotFound, path
        ``lineage.parent``) and must not descend from this version (InvalidInput, same path).
        Returns the new version doc."""

    @abstractmethod
    def move_alias(self, name: str, alias: str, version: int, *, expected: int | None = None,
                   conditional: bool = False, by: str = "", at: float = 0.0) -> dict[str, Any]:
        """Point ``alias`` at existing ``version``; with ``conditional``, in ONE atomic step only if
        it now points at ``expected`` (None: only if it is unset), else Conflict naming the current
        version. Records ``{alias, version, previous, by, at}`` (the last :data:`ALIAS_EVENTS_KEPT`
        per model). Returns the version doc."""

    @abstractmethod
    def delete_alias(self, name: str, alias: str, *, expected: int | None = None,
                     conditional: bool = False, by: str = "", at: float = 0.0) -> int:
        """Remove ``alias`` (compare-and-set as :meth:`move_alias`); returns the version it named.
        NotFound (path ``alias``) when it is not set; the removal is recorded as an event."""

    @abstractmethod
    def alias_events(self, name: str) -> list[dict[str, Any]]:
        """The model's last alias changes, oldest first: ``{alias, version (None: deleted), previous,
        by, at, seq}``."""

    @abstractmethod
    def delete_version(self, name: str, version: int, *, by: str = "", at: float = 0.0) -> dict[str, Any]:
        """Delete one version with its profiles and partition records, and the aliases naming it;
        returns the deleted doc (removed aliases are recorded as events by ``by`` at ``at``). Version
        numbers are never reused; ``latest`` falls back to the newest remaining version; deleting
        the last version deletes the model (as :meth:`delete_model`). The artifact is left to the
        caller (possibly shared)."""

    @abstractmethod
    def put_partition(self, name: str, version: int, sha256: str, record: PartitionRecord,
                      at: float = 0.0) -> dict[str, Any]:
        """Record partition ``sha256`` of the version (idempotent by sha256: the stage facts replaced,
        the deployment id added to ``deployments``); NotFound names the model or version."""

    @abstractmethod
    def list_partitions(self, name: str, version: int) -> list[dict[str, Any]]:
        """``[{sha256, stage, ops, flops, param_bytes, cut_bytes, deployments, updated_at}]`` by stage."""


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


class UserStore(ABC):
    """Accounts of the root's users and the long-lived tokens of its clusters.

    A user doc is ``{user_id, username, roles: [role], password_hash, created_at}``; usernames are
    unique (Conflict otherwise) and compared exactly. The store never sees a password, only its
    hash, and never interprets roles. A cluster token doc is ``{token_id, secret_sha256, owner,
    name, created_at}``: only the sha256 of the token's secret is stored, so a leaked database does
    not leak usable tokens.
    """

    @abstractmethod
    def create_user(self, username: str, password_hash: str, roles: list[str],
                    created_at: float) -> dict[str, Any]:
        """Store a new user (id assigned); Conflict (path ``username``) if the name is taken."""

    @abstractmethod
    def get_user(self, user_id: str) -> dict[str, Any]:
        """NotFound (path ``user_id``) if absent."""

    @abstractmethod
    def find_user(self, username: str) -> dict[str, Any] | None:
        """The user named ``username``, or None."""

    @abstractmethod
    def list_users(self) -> list[dict[str, Any]]:
        """Every user, oldest first."""

    @abstractmethod
    def count_users(self) -> int: ...

    @abstractmethod
    def update_user(self, user_id: str, fields: dict[str, Any]) -> dict[str, Any]:
        """Set ``password_hash`` and/or ``roles`` (other fields are ignored); returns the new doc.
        NotFound if absent."""

    @abstractmethod
    def delete_user(self, user_id: str) -> dict[str, Any]:
        """Delete and return the user; NotFound if absent."""

    @abstractmethod
    def create_cluster_token(self, token_id: str, secret_sha256: str, owner: str, name: str,
                             created_at: float) -> dict[str, Any]:
        """Store a cluster token's digest; Conflict if ``token_id`` exists."""

    @abstractmethod
    def get_cluster_token(self, token_id: str) -> dict[str, Any]:
        """NotFound (path ``token_id``) if absent."""

    @abstractmethod
    def list_cluster_tokens(self) -> list[dict[str, Any]]:
        """Every cluster token doc, oldest first."""

    @abstractmethod
    def delete_cluster_token(self, token_id: str) -> dict[str, Any]:
        """Delete and return the token doc; NotFound if absent."""


USER_FIELDS = frozenset({"password_hash", "roles"})  # what UserStore.update_user may change


def new_user_doc(username: str, password_hash: str, roles: list[str], created_at: float) -> dict[str, Any]:
    return {"user_id": new_id(), "username": username, "roles": list(roles), "password_hash": password_hash,
            "created_at": created_at}


def new_cluster_token_doc(token_id: str, secret_sha256: str, owner: str, name: str,
                          created_at: float) -> dict[str, Any]:
    return {"token_id": token_id, "secret_sha256": secret_sha256, "owner": owner, "name": name,
            "created_at": created_at}


def username_taken(username: str) -> Conflict:
    return Conflict(f"user {username!r} exists", [{"path": "username", "message": "already taken"}])


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


def with_aliases(doc: dict[str, Any], aliases: dict[str, int], owner: str = "") -> dict[str, Any]:
    return {**doc, "aliases": sorted(a for a, v in aliases.items() if v == doc["version"]), "owner": owner}


def model_taken(name: str) -> Conflict:
    """Another user's model has this name (which user is not said)."""
    return Conflict(f"model name {name!r} is taken", [{"path": "model.name",
                                                       "message": "another user owns a model of this name"}])


def new_cluster_doc(cluster_id: str, name: str, location: str, url: str, now: float) -> dict[str, Any]:
    return {"cluster_id": cluster_id, "cluster_name": name, "cluster_location": location, "url": url,
            "registered_at": now, "last_push": None, "aggregate": {}}


def not_found(kind: str, ident: str, path: str) -> NotFound:
    return NotFound(f"{kind} {ident!r} not found", [{"path": path, "message": f"no {kind} {ident!r}"}])


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
