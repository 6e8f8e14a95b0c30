"""Roles, principals and the access rule each route declares.

A :class:`Principal` is who a request acts for: a *user* (logged in with a password, JWT bearer
token) or a *cluster* (a long-lived cluster token of the infrastructure provider role). An
:class:`Access` is what a route admits; the guard checks it before the view runs, and the
OpenAPI document is generated from the same declarations.

Ownership is not a role: an application provider may use the application routes, and the views
then answer 404 for every object that is not the caller's (admins see all).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class Role(StrEnum):
    ADMIN = "admin"
    APPLICATION_PROVIDER = "application_provider"
    INFRASTRUCTURE_PROVIDER = "infrastructure_provider"

    @classmethod
    def parse(cls, text: str) -> Role:
        """A role from its name, also in Oakestra's spelling (``Application_Provider``)."""
        wanted = str(text).strip().lower().replace(" ", "_").replace("-", "_")
        for role in cls:
            if role.value == wanted:
                return role
        raise ValueError(f"unknown role {text!r} (known: {', '.join(r.value for r in cls)})")


ALL_ROLES = frozenset(Role)
USER_KIND, CLUSTER_KIND = "user", "cluster"


@dataclass(frozen=True)
class Principal:
    """``id`` is the user id (a cluster token's id for clusters); ``legacy`` marks the anonymous
    development-mode caller of internal routes (see :attr:`Access.legacy`)."""

    kind: str
    id: str
    name: str
    roles: frozenset[Role]
    legacy: bool = False

    @property
    def is_admin(self) -> bool:
        return Role.ADMIN in self.roles

    @property
    def is_user(self) -> bool:
        return self.kind == USER_KIND

    def owns(self, owner: str | None) -> bool:
        """Whether an object owned by ``owner`` is visible to this principal: admins see all,
        users their own; clusters own nothing."""
        return self.is_admin or (self.is_user and bool(owner) and owner == self.id)


LEGACY_CLUSTER = Principal(CLUSTER_KIND, "development", "anonymous (development mode)",
                           frozenset({Role.INFRASTRUCTURE_PROVIDER}), legacy=True)


@dataclass(frozen=True)
class Access:
    """What a route admits.

    ``public``: anyone, no token. Otherwise a user holding one of ``roles``, or (``clusters``)
    a cluster token. ``legacy``: an internal route that, in development mode on loopback only,
    also admits a caller without any token, so processes started before they were given a
    cluster token keep working (the guard logs a warning once).
    """

    name: str
    roles: frozenset[Role] = field(default_factory=frozenset)
    clusters: bool = False
    public: bool = False
    legacy: bool = False
    summary: str = ""

    def admits(self, principal: Principal) -> bool:
        if self.public:
            return True
        if principal.kind == CLUSTER_KIND:
            return self.clusters
        return bool(self.roles & principal.roles)


_APP_USERS = frozenset({Role.ADMIN, Role.APPLICATION_PROVIDER})
_INFRA = frozenset({Role.ADMIN, Role.INFRASTRUCTURE_PROVIDER})

PUBLIC = Access("public", public=True, summary="no token")
OWNER = Access("owner", _APP_USERS,
               summary="admin or application provider; other users' objects answer 404")
INTERNAL = Access("internal", _INFRA, clusters=True, legacy=True,
                  summary="cluster token, admin or infrastructure provider")
PROFILES = Access("profiles", _APP_USERS, clusters=True, legacy=True,
                  summary="cluster token, or the model's owner (404 for others), or admin")
CLUSTER_READ = Access("cluster-read", ALL_ROLES, clusters=True, legacy=True,
                      summary="any token")
SIGNED_IN = Access("signed-in", ALL_ROLES, summary="any signed-in user (no cluster, no anonymous caller)")
INFRASTRUCTURE = Access("infrastructure", _INFRA, summary="admin or infrastructure provider")
ADMIN = Access("admin", frozenset({Role.ADMIN}), summary="admin")
