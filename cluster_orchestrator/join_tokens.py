"""Join tokens: what a node must show (``Authorization: Bearer``) to register with a cluster.

Moved out of :mod:`.nodes` (which re-exports every name here, so imports from there keep
working); the tokens are about admission, the registry about the nodes admitted.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import threading
from collections.abc import Mapping
from typing import Any

from cluster_orchestrator.store import ClusterStateStore, Doc
from treeline_common.clock import Clock
from treeline_common.errors import InvalidInput, NotFound

log = logging.getLogger(__name__)

JOIN_TOKEN_ENV = "TREELINE_JOIN_TOKEN"
JOIN_PREFIX = "tlj_"
JOIN_TOKENS_KEY = "join_tokens"  # store setting: [{token_id, name, created_at, initial, sha256}]
MIN_JOIN_TOKEN_CHARS = 16


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_join_token() -> tuple[str, str]:
    """``(token, token_id)``: ``tlj_<id>_<secret>`` (the id names it in listings and revocations)."""
    token_id = secrets.token_hex(4)
    return f"{JOIN_PREFIX}{token_id}_{secrets.token_urlsafe(24)}", token_id


class JoinTokens:
    """The tokens a node must show (``Authorization: Bearer``) to register with this cluster.

    Like kubeadm/k3s join tokens: the cluster makes one at its first start (or takes the one it is
    given with ``--join-token``), kept as a SHA-256 digest in the store setting ``join_tokens``
    (the token itself is shown once: in the log when made here, in the answer when made over the
    API). The first one is the *initial* token; it may also create, list and revoke tokens
    (``/api/join-tokens``), which tokens made over the API may not. Thread-safe.
    """

    def __init__(self, store: ClusterStateStore, clock: Clock) -> None:
        self._store = store
        self._clock = clock
        self._lock = threading.Lock()

    def _docs(self) -> list[Doc]:
        stored = self._store.get_setting(JOIN_TOKENS_KEY)
        return [dict(d) for d in stored if isinstance(d, dict)] if isinstance(stored, list) else []

    def _add(self, token: str, token_id: str, name: str, initial: bool) -> Doc:
        doc = {"token_id": token_id, "name": name, "created_at": self._clock.now(), "initial": initial,
               "sha256": _digest(token)}
        self._store.set_setting(JOIN_TOKENS_KEY, [*self._docs(), doc])
        return doc

    def ensure_initial(self, given: str | None = None) -> str | None:
        """Make sure an initial token exists; returns a token only when one was made just now.

        ``given`` (``--join-token``): accepted from now on as an initial token (kept as a digest).
        Without it, the first start makes a random one and returns it, for the log.
        """
        with self._lock:
            docs = self._docs()
            if given:
                if len(given.strip()) < MIN_JOIN_TOKEN_CHARS:
                    need = f"needs at least {MIN_JOIN_TOKEN_CHARS} characters"
                    raise InvalidInput("join token too short", [{"path": "join_token", "message": need}])
                given = given.strip()
                if not any(d.get("sha256") == _digest(given) for d in docs):
                    self._add(given, f"given-{_digest(given)[:8]}", "--join-token", initial=True)
                return None
            if any(d.get("initial") for d in docs):
                return None
            token, token_id = new_join_token()
            self._add(token, token_id, "initial", initial=True)
            return token

    def create(self, name: str = "") -> tuple[Doc, str]:
        """A new (non-initial) token: ``(its doc without the digest, the token)``."""
        token, token_id = new_join_token()
        with self._lock:
            doc = self._add(token, token_id, name, initial=False)
        log.info("join token %s (%s) created", token_id, name or "unnamed")
        return public_join_token(doc), token

    def list(self) -> list[Doc]:
        with self._lock:
            return [public_join_token(d) for d in self._docs()]

    def revoke(self, token_id: str) -> Doc:
        with self._lock:
            docs = self._docs()
            doc = next((d for d in docs if d.get("token_id") == token_id), None)
            if doc is None:
                raise NotFound(f"join token {token_id!r} not found",
                               [{"path": "token_id", "message": f"no join token {token_id!r}"}])
            self._store.set_setting(JOIN_TOKENS_KEY, [d for d in docs if d is not doc])
        log.info("join token %s revoked", token_id)
        return public_join_token(doc)

    def find(self, token: str | None) -> Doc | None:
        """The stored doc of ``token`` (constant-time digest comparison), None when it is not one."""
        if not token:
            return None
        digest = _digest(token)
        with self._lock:
            docs = self._docs()
        match = None
        for doc in docs:
            if hmac.compare_digest(digest, str(doc.get("sha256", ""))):
                match = doc
        return match


def public_join_token(doc: Mapping[str, Any]) -> Doc:
    """A join token doc without its digest."""
    return {k: v for k, v in doc.items() if k != "sha256"}
