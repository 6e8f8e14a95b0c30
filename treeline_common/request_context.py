"""Request and deployment ids for the logs: the Flask hook of the root and the clusters, and
the data plane's helper.

**HTTP.** :func:`install_request_ids` gives every request an id: the caller's ``X-Request-ID``
when it is a sane token (1 to 64 characters of ``[A-Za-z0-9._-]``), a new uuid4 hex otherwise
(absent, too long, or any other character: a header is never echoed into logs unchecked). The id
and the deployment the route names (:func:`deployment_of_route`) are bound to the request's
context (:func:`treeline_common.logs.log_context`), so every line logged while the request is
handled carries them, and the id is echoed as ``X-Request-ID`` on every response, errors
included (an error handler's answer, a 404 of an unknown route, a refusal of the guard).

**Data plane.** :func:`stage_log_context` binds a tensor-wire request id and the deployment of
a stage key around a log call: logging paths only (an error, a refusal), never per request on
the fast path.

Flask is imported lazily, so this leaf package stays importable with numpy alone.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from typing import Any

from treeline_common.jobs import deployment_id_of
from treeline_common.logs import BoundIds, bind_log_context, log_context, unbind_log_context
from treeline_common.messages import parse_stage_key

REQUEST_ID_HEADER = "X-Request-ID"
MAX_REQUEST_ID = 64  # characters
_SANE_ID = re.compile(rf"[A-Za-z0-9._-]{{1,{MAX_REQUEST_ID}}}")
_V2_MODEL = "/v2/models/<name>"  # v2 routes: <name> is a service id (cluster_orchestrator.inference_v2)
_G_REQUEST_ID = "treeline_request_id"
_G_BOUND = "treeline_log_bound"


def new_request_id() -> str:
    """A fresh request id: 32 hex digits (uuid4)."""
    return uuid.uuid4().hex


def request_id_from(header: str | None, make: Callable[[], str] = new_request_id) -> str:
    """``header`` when it is a sane token (see the module docstring), else ``make()``."""
    if header and _SANE_ID.fullmatch(header):
        return header
    return make()


def deployment_of_route(rule: str, view_args: Mapping[str, Any]) -> str:
    """The deployment a route is about, "" for none: ``<service_id>-<instance>``
    (:func:`~treeline_common.jobs.deployment_id_of`) when the route names both, the service id
    when it names only that, the model name of a v2 route (a service id); e.g.
    ``("/api/service/<service_id>/<instance>", {"service_id": "s1", "instance": "0"})`` -> ``"s1-0"``."""
    service = view_args.get("service_id")
    if service:
        instance = view_args.get("instance")
        return deployment_id_of(str(service), instance) if instance is not None else str(service)
    if rule.startswith(_V2_MODEL):
        return str(view_args.get("name") or "")
    return ""


def install_request_ids(app: Any) -> None:
    """Bind each request's id and deployment to its log context and echo ``X-Request-ID``.

    The binding hook runs before every other ``before_request`` hook, whenever this is called
    (metrics, the guard: a refusal is logged with the id too); the echo reads the id the hook
    chose, or chooses it when an earlier failure skipped the hook.
    """
    from flask import request

    # kept in the request's own environ, not in ``g``: a request made while another is handled
    # in the same thread (a test client inside a view) shares the outer one's app context and
    # ``g``, and would otherwise take over its id and leave its ids bound after it ended
    def bind() -> None:
        rid = request_id_from(request.headers.get(REQUEST_ID_HEADER))
        rule = request.url_rule.rule if request.url_rule is not None else ""
        request.environ[_G_REQUEST_ID] = rid
        request.environ[_G_BOUND] = bind_log_context(rid, deployment_of_route(rule, request.view_args or {}))

    def echo(response: Any) -> Any:
        rid = request.environ.get(_G_REQUEST_ID)
        if rid is None:
            rid = request_id_from(request.headers.get(REQUEST_ID_HEADER))
            request.environ[_G_REQUEST_ID] = rid
        response.headers[REQUEST_ID_HEADER] = rid
        return response

    def unbind(_exc: BaseException | None) -> None:
        bound: BoundIds | None = request.environ.pop(_G_BOUND, None)
        if bound is not None:
            unbind_log_context(bound)

    app.before_request_funcs.setdefault(None, []).insert(0, bind)
    app.after_request(echo)
    app.teardown_request(unbind)


def deployment_of_stage(stage_key: str) -> str:
    """The deployment id of a data-plane stage key (:func:`~treeline_common.messages.stage_key`);
    "" when it is not one (a probe, a malformed key: the caller's text is not echoed twice)."""
    try:
        return parse_stage_key(stage_key)[0]
    except ValueError:
        return ""


def stage_log_context(request_id: str, stage_key: str) -> AbstractContextManager[None]:
    """:func:`~treeline_common.logs.log_context` of a data-plane request: its wire request id and
    the deployment of the stage it addresses."""
    return log_context(request_id or None, deployment_of_stage(stage_key) or None)
