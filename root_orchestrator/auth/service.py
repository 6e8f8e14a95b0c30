"""Login, refresh, authentication and account management over the :class:`UserStore`.

Contract:

- ``login`` answers Oakestra's ``{token, refresh_token}``; a wrong password and an unknown user
  are the same 401 (and take the same time: see :mod:`root_orchestrator.auth.passwords`).
- ``authenticate`` turns an ``Authorization`` header into a :class:`Principal` or raises 401 with
  the reason (missing scheme, forged or expired token, deleted user, changed password, revoked
  cluster token). Roles are read from the store on every request, so a role change or a deleted
  account takes effect at once, not when the token expires.
- Passwords are hashed here; the store sees hashes only. Cluster tokens are shown once, when made.
"""

from __future__ import annotations

import hmac
import logging
import re
from typing import Any

from root_orchestrator.auth.errors import Unauthorized, unauthorized
from root_orchestrator.auth.passwords import MIN_LENGTH, hash_password, verify
from root_orchestrator.auth.principals import CLUSTER_KIND, USER_KIND, Principal, Role
from root_orchestrator.auth.settings import DEFAULT_ADMIN, SecurityConfig, digest
from root_orchestrator.auth.tokens import (
    ACCESS,
    CLUSTER_PREFIX,
    REFRESH,
    TokenIssuer,
    looks_like_jwt,
    new_cluster_token,
    password_version,
    split_cluster_token,
)
from root_orchestrator.stores.base import UserStore
from treeline_common.clock import Clock
from treeline_common.errors import InvalidInput, NotFound

log = logging.getLogger(__name__)

USERNAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
_CLUSTER_ROLES = frozenset({Role.INFRASTRUCTURE_PROVIDER})


def public_user(doc: dict[str, Any]) -> dict[str, Any]:
    """A user doc without its password hash (what the REST API shows)."""
    return {k: v for k, v in doc.items() if k != "password_hash"}


def parse_roles(raw: Any, path: str = "roles") -> list[str]:
    """Role names (Oakestra's spellings accepted) as sorted canonical values; InvalidInput otherwise."""
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list) or not raw:
        raise InvalidInput("roles must be a non-empty list",
                           [{"path": path, "message": "expected a list of roles"}])
    try:
        return sorted({Role.parse(str(r)).value for r in raw})
    except ValueError as exc:
        raise InvalidInput(str(exc), [{"path": path, "message": str(exc)}]) from None


def check_username(username: Any) -> str:
    if not isinstance(username, str) or not USERNAME_RE.match(username):
        raise InvalidInput("invalid username",
                           [{"path": "username", "message": f"must match {USERNAME_RE.pattern}"}])
    return username


def check_password(password: Any) -> str:
    if not isinstance(password, str) or len(password) < MIN_LENGTH:
        raise InvalidInput("invalid password", [
            {"path": "password",
             "message": f"must be a string of at least {MIN_LENGTH} characters"}])
    return password


def _roles_of(doc: dict[str, Any]) -> frozenset[Role]:
    roles = set()
    for raw in doc.get("roles") or []:
        try:
            roles.add(Role.parse(str(raw)))
        except ValueError:
            log.warning("user %s has an unknown role %r (ignored)", doc.get("username"), raw)
    return frozenset(roles)


class AuthService:
    def __init__(self, users: UserStore, clock: Clock, config: SecurityConfig) -> None:
        self.users = users
        self.clock = clock
        self.config = config
        self.tokens = TokenIssuer(config.jwt_secret, clock, config.access_ttl_s, config.refresh_ttl_s)

    # -- tokens ---------------------------------------------------------------------------------------

    def login(self, username: Any, password: Any) -> dict[str, str]:
        user = self.users.find_user(username) if isinstance(username, str) and username else None
        if not isinstance(password, str) or not verify(user["password_hash"] if user else None,
                                                                 password):
            raise Unauthorized("invalid username or password",
                               [{"path": "password", "message": "invalid username or password"}])
        assert user is not None  # verify() is False without a user
        log.info("user %s logged in", user["username"])
        return {"token": self.tokens.issue(user, ACCESS), "refresh_token": self.tokens.issue(user, REFRESH)}

    def refresh(self, refresh_token: str) -> dict[str, str]:
        """A new access token for a valid refresh token (Oakestra's ``{token}``)."""
        user = self._user_of(self.tokens.decode(refresh_token, REFRESH))
        return {"token": self.tokens.issue(user, ACCESS)}

    def authenticate(self, header: str | None) -> Principal | None:
        """The principal of an ``Authorization`` header; None without one; Unauthorized if invalid."""
        if header is None or not header.strip():
            return None
        scheme, _, token = header.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise unauthorized("expected 'Authorization: Bearer <token>'")
        if looks_like_jwt(token):
            user = self._user_of(self.tokens.decode(token, ACCESS))
            return Principal(USER_KIND, user["user_id"], user["username"], _roles_of(user))
        return self._cluster(token)

    def _user_of(self, claims: dict[str, Any]) -> dict[str, Any]:
        try:
            user = self.users.get_user(str(claims["sub"]))
        except NotFound:
            raise unauthorized("the token's user no longer exists") from None
        if not hmac.compare_digest(str(claims.get("pv", "")), password_version(user["password_hash"])):
            raise unauthorized("token revoked (the password changed)")
        return user

    def _cluster(self, token: str) -> Principal:
        token_digest = digest(token)
        if any(hmac.compare_digest(token_digest, d) for d in self.config.static_cluster_digests):
            return Principal(CLUSTER_KIND, "preseeded", "pre-seeded cluster token", _CLUSTER_ROLES)
        if not token.startswith(CLUSTER_PREFIX):
            raise unauthorized("unknown token")
        token_id, secret_digest = split_cluster_token(token)
        try:
            doc = self.users.get_cluster_token(token_id)
        except NotFound:
            raise unauthorized("unknown or revoked cluster token") from None
        if not hmac.compare_digest(secret_digest, str(doc.get("secret_sha256"))):
            raise unauthorized("unknown or revoked cluster token")
        return Principal(CLUSTER_KIND, token_id, str(doc.get("name") or token_id), _CLUSTER_ROLES)

    def create_cluster_token(self, owner: Principal, name: str) -> tuple[dict[str, Any], str]:
        """A new long-lived cluster token: ``(its doc without the digest, the token)``; the token
        is not stored and cannot be shown again."""
        token, token_id, secret_digest = new_cluster_token()
        doc = self.users.create_cluster_token(token_id, secret_digest, owner.id, name, self.clock.now())
        log.info("cluster token %s (%s) created by %s", token_id, name or "unnamed", owner.name)
        return public_token(doc), token

    # -- accounts -------------------------------------------------------------------------------------

    def create_user(self, username: Any, password: Any, roles: Any) -> dict[str, Any]:
        password_hash = hash_password(check_password(password))
        doc = self.users.create_user(check_username(username), password_hash, parse_roles(roles),
                                     self.clock.now())
        log.info("user %s created with roles %s", doc["username"], ", ".join(doc["roles"]))
        return doc

    def update_user(self, user_id: str, body: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(body) - {"password", "roles"})
        if unknown:
            raise InvalidInput("only password and roles can be changed",
                               [{"path": k, "message": "cannot be changed"} for k in unknown])
        fields: dict[str, Any] = {}
        if "password" in body:
            fields["password_hash"] = hash_password(check_password(body["password"]))
        if "roles" in body:
            fields["roles"] = parse_roles(body["roles"])
        return self.users.update_user(user_id, fields)

    def ensure_default_admin(self) -> bool:
        """Development mode: create ``Admin``/``Admin`` when no user exists (True if it did)."""
        if self.config.production or self.users.count_users() > 0:
            return False
        username, password = DEFAULT_ADMIN
        self.create_user(username, password, [Role.ADMIN.value])
        log.warning("development mode: created the default account %s/%s; never expose this root "
                    "(use --production and `treeline admin create`)", username, password)
        return True


def public_token(doc: dict[str, Any]) -> dict[str, Any]:
    """A cluster token doc without its secret's digest."""
    return {k: v for k, v in doc.items() if k != "secret_sha256"}
