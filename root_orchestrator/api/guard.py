"""The Flask edge of the root's security: every request is authenticated before its view runs.

Each view declares an :class:`~root_orchestrator.auth.principals.Access` with :func:`access`
(the OpenAPI document's per-route security is generated from the same declarations). A view
without a declaration is refused for everyone: the default is deny. The guard runs as a
``before_request`` hook:

1. public routes pass;
2. otherwise the ``Authorization: Bearer`` header must name a valid user or cluster token
   (401 with the reason, and ``WWW-Authenticate: Bearer``, from ``treeline_common.http``);
3. the principal's role must be admitted (403). Objects of other users are not a role matter:
   views fetch them through :func:`visible_application` and friends, which answer 404.

Development mode on loopback only: an *internal* route (``Access.legacy``) called without any
token is admitted as :data:`LEGACY_CLUSTER`, with one warning per process, so clusters started
without ``--root-token`` keep working until the launcher passes one.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from flask import Flask, current_app, g, request

from root_orchestrator.api.context import ctx
from root_orchestrator.auth.errors import Forbidden, Unauthorized, unauthorized
from root_orchestrator.auth.principals import LEGACY_CLUSTER, Access, Principal
from root_orchestrator.auth.service import AuthService
from root_orchestrator.auth.settings import is_loopback
from root_orchestrator.stores import Stores
from root_orchestrator.stores.base import model_taken, not_found
from treeline_common.errors import NotFound

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])
ACCESS_ATTR = "treeline_access"
EXTENSION = "treeline_auth"


def access(rule: Access) -> Callable[[F], F]:
    """Declare what a view admits (checked by the guard before the view runs)."""
    def mark(view: F) -> F:
        setattr(view, ACCESS_ATTR, rule)
        return view
    return mark


def access_of(view: Callable[..., Any]) -> Access | None:
    found = getattr(view, ACCESS_ATTR, None)
    return found if isinstance(found, Access) else None


def auth_service() -> AuthService:
    service = current_app.extensions[EXTENSION]
    if not isinstance(service, AuthService):
        raise RuntimeError(f"app.extensions[{EXTENSION!r}] is not an AuthService")
    return service


def principal() -> Principal:
    """Who the current request acts for (only valid in a non-public view)."""
    found = g.get("principal")
    if not isinstance(found, Principal):
        raise Unauthorized("authentication required", [{"path": "Authorization", "message": "no principal"}])
    return found


class _LegacyWarning:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._warned = False

    def once(self, path: str) -> None:
        with self._lock:
            if self._warned:
                return
            self._warned = True
        log.warning("development mode: internal route %s called without a token; admitted on loopback "
                    "only (start clusters with --root-token / TREELINE_ROOT_TOKEN)", path)


def install_guard(app: Flask, auth: AuthService) -> None:
    """Authenticate every request of ``app``: Unauthorized (401) or Forbidden (403) before the view
    runs; ``install_error_handlers`` turns them into error bodies (a 401 with ``WWW-Authenticate``)."""
    if EXTENSION in app.extensions:
        raise RuntimeError(f"{app.name} already has an auth guard")
    app.extensions[EXTENSION] = auth
    legacy = _LegacyWarning()

    @app.before_request
    def _guard() -> None:
        if request.endpoint is None:  # no route: Flask answers 404/405 itself
            return
        rule = access_of(app.view_functions[request.endpoint])
        if rule is None:
            log.error("view %s declares no access rule: refused", request.endpoint)
            raise Forbidden("this route declares no access rule", [{"path": request.path, "message": "deny"}])
        if rule.public:
            return
        found = auth.authenticate(request.headers.get("Authorization"))
        if found is None:
            local = is_loopback(request.remote_addr or "")
            if not (rule.legacy and auth.config.anonymous_internal and local):
                raise unauthorized("missing bearer token")
            legacy.once(request.path)
            found = LEGACY_CLUSTER
        if not rule.admits(found):
            raise Forbidden(f"{found.kind} {found.name!r} may not use this route ({rule.summary})",
                            [{"path": request.path, "message": f"requires: {rule.summary}"}])
        g.principal = found


# -- ownership: other users' objects are 404 ---------------------------------------------------------

def visible_application(stores: Stores, application_id: str) -> dict[str, Any]:
    doc = stores.applications.get_application(application_id)
    if not principal().owns(str(doc.get("userId") or "")):
        raise not_found("application", application_id, "application_id")
    return doc


def visible_services(stores: Stores) -> list[dict[str, Any]]:
    """Every service the caller may see: all for admins, else those of the caller's applications."""
    who = principal()
    if who.is_admin:
        return stores.applications.list_services()
    return [s for a in stores.applications.list_applications(who.id)
            for s in stores.applications.list_services(a["applicationID"])]


def visible_service(stores: Stores, service_id: str) -> dict[str, Any]:
    doc = stores.applications.get_service(service_id)
    try:
        visible_application(stores, str(doc.get("application_id")))
    except NotFound:  # the application is another user's (or gone): the service reads as absent
        raise not_found("service", service_id, "service_id") from None
    return doc


def visible_model(stores: Stores, name: str, ref: int | str = "latest") -> dict[str, Any]:
    """The version ``ref`` of a model the caller may see (clusters see every model)."""
    doc = stores.models.get_version(name, ref)
    who = principal()
    if who.kind != "cluster" and not who.owns(str(doc.get("owner") or "")):
        raise not_found("model", name, "model.name")
    return doc


def model_owner(name: str) -> str | None:
    """The owner a new version of ``name`` records: the caller, or None (keep the model's owner)
    when an admin adds a version to an existing model."""
    who = principal()
    if who.is_admin:
        try:
            ctx().stores.models.get_version(name, "latest")
            return None
        except NotFound:
            pass
    return who.id


def claims_model_name(view: F) -> F:
    """Before an upload is read: 409 when ``name`` is another user's model (the body would be
    refused after the upload otherwise). The store checks again when the version is created."""
    @functools.wraps(view)
    def checked(*args: Any, **kwargs: Any) -> Any:
        name = kwargs.get("name")
        who = principal()
        if isinstance(name, str) and not who.is_admin:
            try:
                owner = ctx().stores.models.get_version(name, "latest").get("owner")
            except NotFound:
                owner = None
            if owner is not None and owner != who.id:
                raise model_taken(name)
        return view(*args, **kwargs)
    return checked  # type: ignore[return-value]
