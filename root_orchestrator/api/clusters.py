"""Cluster registry, the clusters' information pushes, and cluster tokens.

Clusters call the root with a *cluster token* (``Authorization: Bearer <token>``): one made with
``POST /api/clusters/tokens`` by an admin or infrastructure provider (shown once), or one the
root was started with (``--cluster-token`` / ``TREELINE_CLUSTER_TOKEN``). Listing clusters needs
any token; the lists answer Oakestra's array shape.

A cluster name belongs to the identity that registered it first: the pre-seeded token (by its
digest), the stored cluster token (by its id) or the user. Registering the name again with
another identity AND another URL is 409 (it would take the cluster over: the root would send its
jobs elsewhere). Another identity at the same URL is accepted (a restarted cluster with a second
token of its provider); it takes the name over only when the bound token is revoked (rotation).
Anonymous development-mode registrations bind nothing. The bindings are kept beside the cluster
tokens (``bind-<sha256(name)[:32]>``, owner ``cluster-binding``, never a valid token, left out
of the token listings); an admin frees a name with ``DELETE /api/clusters/tokens/<that id>``.

A cluster's push (``POST /api/information/<cluster_id>``) is accepted only from the identity the
cluster's name is bound to (or an admin user): another valid cluster token, or a user other than
an admin, is 403 ``FORBIDDEN`` and the push changes nothing. A name bound to nothing (anonymous
development-mode registration) accepts any caller the route admits.

The token a cluster authenticates with (at registration, and on each push from the name's own
identity) is what the root sends back on its calls to that cluster (``ClusterClient``).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from typing import Any
from urllib.parse import urlparse

from flask import Blueprint, jsonify, request

from root_orchestrator.api.context import ctx
from root_orchestrator.api.guard import access, auth_service, principal
from root_orchestrator.api.oakestra import cluster_view, listing
from root_orchestrator.auth.errors import Forbidden
from root_orchestrator.auth.principals import CLUSTER_KIND, CLUSTER_READ, INFRASTRUCTURE, INTERNAL, Principal
from root_orchestrator.auth.service import public_token
from root_orchestrator.pushes import apply_push
from root_orchestrator.ranking import is_active
from root_orchestrator.stores.base import UserStore, not_found
from treeline_common.errors import Conflict, InvalidInput, NotFound
from treeline_common.http import json_body

log = logging.getLogger(__name__)

bp = Blueprint("clusters", __name__)


def _view(cluster: dict[str, Any], now: float, window_s: float) -> dict[str, Any]:
    return cluster_view({**cluster, "active": is_active(cluster, now, window_s)})


def _registration(body: dict[str, Any]) -> tuple[str, str, str]:
    """(name, location, url without a trailing slash) of a registration body, or InvalidInput
    listing every field that is wrong."""
    name, location, url = body.get("cluster_name"), body.get("cluster_location", ""), body.get("url")
    problems = []
    if not isinstance(name, str) or not name.strip():
        problems.append({"path": "cluster_name", "message": "must be a non-empty string"})
    if not isinstance(location, str):
        problems.append({"path": "cluster_location", "message": "must be a string"})
    if not isinstance(url, str) or urlparse(url).scheme not in ("http", "https") or not urlparse(url).netloc:
        problems.append({"path": "url", "message": "must be an http(s) URL"})
    if problems or not (isinstance(name, str) and isinstance(location, str) and isinstance(url, str)):
        raise InvalidInput("invalid cluster registration", problems)
    return name, location, url.rstrip("/")


BINDING_OWNER = "cluster-binding"
BINDING_PREFIX = "bind-"
ANONYMOUS = "anonymous"


def _bearer() -> str | None:
    scheme, _, token = request.headers.get("Authorization", "").strip().partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def _identity(who: Principal, token: str | None) -> str:
    """Who registers: ``static:<sha256 of the token>``, ``token:<token id>``, ``user:<id>`` or anonymous."""
    if who.legacy:
        return ANONYMOUS
    if who.kind == CLUSTER_KIND:
        if who.id == "preseeded":
            return f"static:{hashlib.sha256((token or '').encode()).hexdigest()}"
        return f"token:{who.id}"
    return f"user:{who.id}"


def _binding_id(name: str) -> str:
    return BINDING_PREFIX + hashlib.sha256(name.encode()).hexdigest()[:32]


def is_binding(doc: dict[str, Any]) -> bool:
    return doc.get("owner") == BINDING_OWNER


def _bound(users: UserStore, name: str) -> str | None:
    try:
        doc = users.get_cluster_token(_binding_id(name))
    except NotFound:
        return None
    if not is_binding(doc):
        return None
    return str(doc.get("name") or "") or None


def _bind(users: UserStore, name: str, identity: str, now: float) -> None:
    """Bind ``name`` to ``identity`` (a record that can never authenticate: its digest is no digest)."""
    binding = _binding_id(name)
    with contextlib.suppress(NotFound):
        users.delete_cluster_token(binding)
    users.create_cluster_token(binding, "!binding", BINDING_OWNER, identity, now)


def _still_valid(users: UserStore, identity: str) -> bool:
    """Whether the credential behind a bound identity would still be accepted."""
    kind, _, value = identity.partition(":")
    if kind == "static":
        return value in auth_service().config.static_cluster_digests
    try:
        if kind == "token":
            users.get_cluster_token(value)
        elif kind == "user":
            users.get_user(value)
        else:
            return False
    except NotFound:
        return False
    return True


@bp.post("/api/clusters/register")
@access(INTERNAL)
def register() -> Any:
    name, location, url = _registration(json_body(request))
    c = ctx()
    users, token = c.stores.users, _bearer()
    caller = _identity(principal(), token)
    existing = next((d for d in c.stores.clusters.list() if d.get("cluster_name") == name), None)
    bound = _bound(users, name) if existing is not None else None
    rebind = caller != ANONYMOUS and caller != bound
    if existing is not None and bound not in (None, ANONYMOUS, caller):
        if str(existing.get("url", "")).rstrip("/") != url:
            log.warning("cluster %s: registration from another identity with another URL (%s) refused",
                        name, url)
            raise Conflict(f"cluster name {name!r} is registered by another identity at another URL; "
                           "use its token, its URL, or another cluster name",
                           [{"path": "cluster_name", "message": "registered by another identity"}])
        rebind = not _still_valid(users, str(bound))  # same URL: the name moves only off a revoked token
    doc, created = c.stores.clusters.register(name, location, url, c.clock.now())
    if rebind:
        _bind(users, name, caller, c.clock.now())
    if token and (rebind or caller == bound):
        c.cluster_client.remember_token(url, token)
    log.info("cluster %s %s as %s (%s)", name, "registered" if created else "re-registered",
             doc["cluster_id"], url)
    return jsonify({"cluster_id": doc["cluster_id"]}), (201 if created else 200)


def _clusters(active_only: bool) -> list[dict[str, Any]]:
    c = ctx()
    now = c.clock.now()
    views = [_view(d, now, c.active_window_s) for d in c.stores.clusters.list()]
    return [v for v in views if v["active"]] if active_only else views


@bp.get("/api/clusters/")
@access(CLUSTER_READ)
def list_clusters() -> Any:
    return listing("clusters", _clusters(active_only=False))


@bp.get("/api/clusters/active")
@access(CLUSTER_READ)
def list_active_clusters() -> Any:
    return listing("clusters", _clusters(active_only=True))


@bp.get("/api/clusters/<cluster_id>")
@access(CLUSTER_READ)
def get_cluster(cluster_id: str) -> Any:
    c = ctx()
    return jsonify(_view(c.stores.clusters.get(cluster_id), c.clock.now(), c.active_window_s))


def _own_cluster(users: UserStore, cluster: dict[str, Any], token: str | None) -> bool:
    """Whether the caller may act for ``cluster``: 403 when the name is bound to another identity
    (admins may always). True when the caller is the bound identity itself."""
    who = principal()
    bound = _bound(users, str(cluster.get("cluster_name")))
    caller = _identity(who, token)
    if bound in (None, ANONYMOUS) or bound == caller:
        return bound == caller
    if who.is_admin:
        return False
    log.warning("cluster %s: a push from an identity that did not register it refused",
                cluster.get("cluster_name"))
    raise Forbidden(f"cluster {cluster.get('cluster_name')!r} was registered with another token; "
                    "call with the token that registered it (or register again at its URL)",
                    [{"path": "Authorization", "message": "not the identity that registered this cluster"}])


@bp.post("/api/information/<cluster_id>")
@access(INTERNAL)
def information(cluster_id: str) -> Any:
    """A cluster's push: only from the identity bound to its name (:func:`_own_cluster`)."""
    c = ctx()
    body, token = json_body(request), _bearer()  # a malformed body is 400 whatever the cluster id
    cluster = c.stores.clusters.get(cluster_id)
    own = _own_cluster(c.stores.users, cluster, token)
    answer = apply_push(c.instances, cluster_id, body)
    if token and own:  # the cluster's own credential: what the root sends on its calls to it
        c.cluster_client.remember_token(str(cluster.get("url", "")), token)
    return jsonify(answer)


@bp.post("/api/clusters/tokens")
@access(INFRASTRUCTURE)
def create_token() -> Any:
    """201 ``{token_id, owner, name, created_at, token}``: ``token`` is shown this once only."""
    body = json_body(request) if request.get_data(cache=True) else {}
    name = body.get("name", "")
    if not isinstance(name, str) or len(name) > 128:
        raise InvalidInput("invalid token name",
                           [{"path": "name", "message": "a string of at most 128 characters"}])
    doc, token = auth_service().create_cluster_token(principal(), name)
    return jsonify({**doc, "token": token}), 201


@bp.get("/api/clusters/tokens")
@access(INFRASTRUCTURE)
def list_tokens() -> Any:
    """The caller's cluster tokens (every one for admins), without secrets."""
    who = principal()
    return jsonify([public_token(t) for t in ctx().stores.users.list_cluster_tokens()
                    if (who.is_admin or t.get("owner") == who.id) and not is_binding(t)])


@bp.delete("/api/clusters/tokens/<token_id>")
@access(INFRASTRUCTURE)
def revoke_token(token_id: str) -> Any:
    """Revoke a token at once (its clusters get 401 on their next call); 404 for others' tokens."""
    users, who = ctx().stores.users, principal()
    doc = users.get_cluster_token(token_id)
    if not (who.is_admin or doc.get("owner") == who.id):
        raise not_found("cluster token", token_id, "token_id")
    users.delete_cluster_token(token_id)
    log.info("cluster token %s revoked by %s", token_id, who.name)
    return jsonify({"revoked": public_token(doc)})
