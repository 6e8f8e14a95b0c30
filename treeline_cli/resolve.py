"""Names to objects: every name the user types resolves to exactly one object, or the error says
which objects it could have meant.

Pure functions over lists of documents (the root's answers), so they are tested without a root.
An id always wins over a name; a name that several objects share is refused with the
candidates and their ids, except where the caller states a preference (``infer`` prefers the
one RUNNING service among several of the same name).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from treeline_cli.errors import Failure, UsageError
from treeline_common.jobs import JobStatus

T = TypeVar("T")
Doc = dict[str, Any]
MAX_LISTED = 8


def _listing(names: Sequence[str]) -> str:
    shown = sorted(set(names))
    more = len(shown) - MAX_LISTED
    return ", ".join(shown[:MAX_LISTED]) + (f" and {more} more" if more > 0 else "")


def resolve_one(kind: str, ref: str, objects: Sequence[T], ident: Callable[[T], str],
                name: Callable[[T], str], label: Callable[[T], str] | None = None,
                list_command: str = "") -> T:
    """The object whose id is ``ref``, else the one object named ``ref``.

    Raises Failure (not found: lists the names there are) or UsageError (ambiguous: lists the
    candidates with ``label`` and says to use an id).
    """
    for obj in objects:
        if ident(obj) == ref:
            return obj
    named = [obj for obj in objects if name(obj) == ref]
    if len(named) == 1:
        return named[0]
    if not named:
        there = f"there are: {_listing([name(o) for o in objects])}" if objects else f"there are no {kind}s"
        hint = f"see `{list_command}`" if list_command else ""
        raise Failure(f"no {kind} {ref!r} ({there})", hint)
    describe = label or (lambda o: ident(o))
    hint = "give the id, or APP/SERVICE" if kind == "service" else "give the id instead of the name"
    raise UsageError(f"{len(named)} {kind}s are named {ref!r}: {', '.join(describe(o) for o in named)}", hint)


def app_id(app: Doc) -> str:
    return str(app.get("applicationID") or app.get("_id") or "")


def app_name(app: Doc) -> str:
    return str(app.get("application_name") or "")


def service_label(service: Doc) -> str:
    return f"{service.get('service_id')} ({service.get('status')})"


def resolve_app(ref: str, apps: Sequence[Doc], services: Sequence[Doc]) -> Doc:
    """An application by id or name; candidates are labelled with their services' states."""
    def label(app: Doc) -> str:
        states = sorted({str(s.get("status")) for s in services if s.get("application_id") == app_id(app)})
        return f"{app_id(app)} ({', '.join(states) or 'no services'})"

    return resolve_one("application", ref, apps, app_id, app_name, label, "treeline get apps")


def resolve_service(ref: str, services: Sequence[Doc], apps: Sequence[Doc] = ()) -> Doc:
    """A service by id, by name, or as ``APP/SERVICE`` (application name or id, service name)."""
    if "/" in ref and not any(s.get("service_id") == ref for s in services):
        app_ref, _, service_name = ref.partition("/")
        app = resolve_app(app_ref, apps, services)
        return service_in_app(app, service_name, services)
    return resolve_one("service", ref, services, lambda s: str(s.get("service_id")),
                       lambda s: str(s.get("microservice_name")), _service_label(apps),
                       "treeline get services")


def _service_label(apps: Sequence[Doc]) -> Callable[[Doc], str]:
    names = {app_id(a): app_name(a) for a in apps}

    def label(service: Doc) -> str:
        app = names.get(str(service.get("application_id")), "?")
        return f"{service.get('service_id')} (application {app}, {service.get('status')})"
    return label


def service_in_app(app: Doc, service_name: str, services: Sequence[Doc]) -> Doc:
    """The service ``service_name`` of one application; the error lists the services it has."""
    own = [s for s in services if s.get("application_id") == app_id(app)]
    named = [s for s in own if service_name in (s.get("microservice_name"), s.get("service_id"))]
    if len(named) == 1:
        return named[0]
    has = _listing([str(s.get("microservice_name")) for s in own]) or "no services"
    raise Failure(f"there is no service {service_name!r} in application {app_name(app)!r} (it has: {has})",
                  "pass one of those with --service")


def inference_target(ref: str, service_name: str | None, apps: Sequence[Doc],
                     services: Sequence[Doc]) -> Doc:
    """The service ``treeline infer REF [--service NAME]`` means.

    ``REF`` is an application (id or name) or a service id. Among the applications of that
    name, their services (named ``NAME`` if given) are the candidates; one candidate wins, or
    else the one that is RUNNING (an old FAILED application of the same name is skipped).
    """
    by_id = [s for s in services if s.get("service_id") == ref]
    if by_id:
        return by_id[0]
    matching = [a for a in apps if app_id(a) == ref] or [a for a in apps if app_name(a) == ref]
    if not matching:
        there = _listing([app_name(a) for a in apps]) or "none"
        raise Failure(f"no application or service {ref!r} (applications: {there})", "see `treeline get apps`")
    ids = {app_id(a) for a in matching}
    own = [s for s in services if s.get("application_id") in ids]
    candidates = own
    if service_name is not None:
        candidates = [s for s in own if service_name in (s.get("microservice_name"), s.get("service_id"))]
        if not candidates:
            has = _listing([str(s.get("microservice_name")) for s in own]) or "no services"
            raise Failure(f"there is no service {service_name!r} in application {ref!r} (it has: {has})",
                          "pass one of those with --service")
    if len(candidates) == 1:
        return candidates[0]
    running = [s for s in candidates if s.get("status") == JobStatus.RUNNING.value]
    if len(running) == 1:
        return running[0]
    if not candidates:
        raise Failure(f"application {ref!r} has no services", "apply an SLA that defines one")
    label = _service_label(apps)
    pool = running or candidates
    names = {str(s.get("microservice_name")) for s in pool}
    hint = ("pass --service with one of: " + _listing(list(names)) if len(names) > 1
            else "give a service id instead")
    raise UsageError(f"{ref!r} matches {len(pool)} services: {', '.join(label(s) for s in pool)}", hint)


def split_model_ref(ref: str) -> tuple[str, str]:
    """``NAME[:VERSION]`` -> (name, version ref; ``latest`` when none)."""
    name, _, version = ref.partition(":")
    if not name:
        raise UsageError(f"bad model reference {ref!r}", "write NAME or NAME:VERSION")
    return name, version or "latest"
