"""The root's security settings: development or production mode, token lifetimes, secrets.

Modes. *Development* (the default when the root binds a loopback address): the root creates
``Admin``/``Admin`` at start when no user exists (Oakestra's documented default, so Oakestra's
clients work unchanged) and, on loopback only, admits internal routes without a token
(processes started before they were given a cluster token). *Production* (``--production``,
``TREELINE_PRODUCTION=1``, or any non-loopback bind): no default account, every route but
login/refresh/health/openapi/docs needs a token; the first admin is made with
``treeline admin create``.

The JWT signing key comes from ``TREELINE_JWT_SECRET`` or is generated once into
``<data-dir>/jwt_secret`` (mode 0600), so tokens survive restarts.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import os
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from treeline_common.errors import InvalidInput

log = logging.getLogger(__name__)

JWT_SECRET_ENV = "TREELINE_JWT_SECRET"
CLUSTER_TOKEN_ENV = "TREELINE_CLUSTER_TOKEN"
PRODUCTION_ENV = "TREELINE_PRODUCTION"
SECRET_FILE = "jwt_secret"
MIN_SECRET_CHARS = 32
MIN_CLUSTER_TOKEN_CHARS = 16
DEFAULT_ACCESS_TTL_S = 3600.0
DEFAULT_REFRESH_TTL_S = 7 * 86400.0
DEFAULT_ADMIN = ("Admin", "Admin")


def is_loopback(host: str) -> bool:
    """Whether a bind address only accepts local connections (``0.0.0.0`` and names other than
    ``localhost`` do not)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def new_cluster_token() -> str:
    """A fresh random token for ``--cluster-token`` / ``--root-token`` (what ``treeline up`` should
    generate per stack and hand to the root and to each cluster)."""
    return "tls_" + secrets.token_urlsafe(32)


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def load_jwt_secret(data_dir: Path, env: Mapping[str, str]) -> str:
    """``TREELINE_JWT_SECRET`` if set, else the key in ``<data_dir>/jwt_secret``, made on first use."""
    configured = env.get(JWT_SECRET_ENV, "").strip()
    if configured:
        if len(configured) < MIN_SECRET_CHARS:
            raise InvalidInput(f"{JWT_SECRET_ENV} is too short", [
                {"path": JWT_SECRET_ENV, "message": f"needs at least {MIN_SECRET_CHARS} characters"}])
        return configured
    path = data_dir / SECRET_FILE
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_hex(32))
        log.info("generated a JWT signing key in %s", path)
    secret = path.read_text().strip()
    if len(secret) < MIN_SECRET_CHARS:
        raise InvalidInput(f"{path} holds no usable key", [{"path": str(path), "message": "too short"}])
    return secret


@dataclass(frozen=True)
class SecurityConfig:
    """``static_cluster_digests``: sha256 of the tokens pre-seeded with ``--cluster-token`` (kept in
    memory only). ``anonymous_internal``: admit internal routes without a token (development
    mode on loopback only; :meth:`build` never sets it otherwise)."""

    jwt_secret: str = field(repr=False)
    production: bool = False
    anonymous_internal: bool = False
    access_ttl_s: float = DEFAULT_ACCESS_TTL_S
    refresh_ttl_s: float = DEFAULT_REFRESH_TTL_S
    static_cluster_digests: frozenset[str] = field(default_factory=frozenset, repr=False)

    @property
    def mode(self) -> str:
        return "production" if self.production else "development"

    @classmethod
    def build(cls, *, jwt_secret: str, host: str, production: bool = False,
              cluster_tokens: Iterable[str] = (), access_ttl_s: float = DEFAULT_ACCESS_TTL_S,
              refresh_ttl_s: float = DEFAULT_REFRESH_TTL_S, allow_anonymous_internal: bool = True,
              ) -> SecurityConfig:
        """The settings of a root bound to ``host``: production whenever asked or not on loopback."""
        production = production or not is_loopback(host)
        tokens = [t.strip() for t in cluster_tokens if t and t.strip()]
        short = [t for t in tokens if len(t) < MIN_CLUSTER_TOKEN_CHARS]
        if short:
            raise InvalidInput("cluster token too short", [
                {"path": "cluster_token", "message": f"needs at least {MIN_CLUSTER_TOKEN_CHARS} characters"}])
        if access_ttl_s <= 0 or refresh_ttl_s <= 0:
            raise InvalidInput("token lifetimes must be positive", [{"path": "token_ttl", "message": "<= 0"}])
        return cls(jwt_secret=jwt_secret, production=production,
                   anonymous_internal=allow_anonymous_internal and not production,
                   access_ttl_s=access_ttl_s, refresh_ttl_s=refresh_ttl_s,
                   static_cluster_digests=frozenset(digest(t) for t in tokens))
