"""Bearer tokens: JWT access and refresh tokens for users, opaque tokens for clusters.

User tokens are HS256 JWTs ``{iss, sub: user_id, name, typ: access|refresh, iat, exp, jti, pv}``.
Expiry is checked against the injected clock (PyJWT's own time checks are off), so tests move
a fake clock instead of sleeping. ``pv`` is a digest of the user's password hash: changing the
password invalidates every token issued before.

Cluster tokens are ``tlc_<token_id>_<secret>``: the store keeps ``sha256(secret)`` under
``token_id``; tokens pre-seeded at start (``--cluster-token``) are any string of 16+ characters
and are compared by digest.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from typing import Any

import jwt

from root_orchestrator.auth.errors import Unauthorized, unauthorized
from treeline_common.clock import Clock

ISSUER = "treeline-root"
ALGORITHM = "HS256"
ACCESS, REFRESH = "access", "refresh"
CLUSTER_PREFIX = "tlc_"


def password_version(password_hash: str) -> str:
    return hashlib.sha256(password_hash.encode()).hexdigest()[:16]


def looks_like_jwt(token: str) -> bool:
    return token.count(".") == 2 and not token.startswith(CLUSTER_PREFIX)


class TokenIssuer:
    def __init__(self, secret: str, clock: Clock, access_ttl_s: float, refresh_ttl_s: float) -> None:
        self._secret = secret
        self._clock = clock
        self._ttl = {ACCESS: access_ttl_s, REFRESH: refresh_ttl_s}

    def issue(self, user: dict[str, Any], typ: str) -> str:
        now = int(self._clock.now())
        claims = {"iss": ISSUER, "sub": user["user_id"], "name": user["username"], "typ": typ, "iat": now,
                  "exp": now + int(self._ttl[typ]), "jti": uuid.uuid4().hex,
                  "pv": password_version(user["password_hash"])}
        return jwt.encode(claims, self._secret, algorithm=ALGORITHM)

    def decode(self, token: str, typ: str) -> dict[str, Any]:
        """The claims of a valid, unexpired token of kind ``typ``; Unauthorized saying why not."""
        try:
            claims = jwt.decode(token, self._secret, algorithms=[ALGORITHM], issuer=ISSUER,
                                options={"verify_exp": False, "verify_iat": False, "verify_nbf": False,
                                         "require": ["exp", "iat", "sub", "typ", "iss"]})
        except jwt.InvalidSignatureError:
            raise unauthorized("invalid token signature") from None
        except jwt.PyJWTError as exc:
            raise unauthorized(f"invalid token ({type(exc).__name__})") from None
        if claims.get("typ") != typ:
            raise unauthorized(f"a {claims.get('typ')} token cannot be used as a {typ} token")
        exp = claims.get("exp")
        if not isinstance(exp, int | float) or isinstance(exp, bool) or exp <= self._clock.now():
            raise unauthorized("token expired")
        return claims


def new_cluster_token() -> tuple[str, str, str]:
    """``(token, token_id, sha256 of its secret)`` for a stored cluster token."""
    token_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    return f"{CLUSTER_PREFIX}{token_id}_{secret}", token_id, hashlib.sha256(secret.encode()).hexdigest()


def split_cluster_token(token: str) -> tuple[str, str]:
    """``(token_id, sha256 of the secret)`` of a ``tlc_`` token; Unauthorized if malformed."""
    parts = token.split("_", 2)
    if len(parts) != 3 or parts[0] + "_" != CLUSTER_PREFIX or not parts[1] or not parts[2]:
        raise Unauthorized("authentication required: malformed cluster token",
                           [{"path": "Authorization", "message": "malformed cluster token"}])
    return parts[1], hashlib.sha256(parts[2].encode()).hexdigest()
