"""One error hierarchy for Treeline, with its HTTP mapping written once.

Every error has a stable ``code``; :func:`http_status` maps codes to HTTP statuses, and
:meth:`TreelineError.to_body` / :func:`from_body` turn errors into JSON bodies and back,
so a REST client raises the same class the server raised.
"""

from __future__ import annotations

from typing import Any


class TreelineError(Exception):
    """Base error. ``details`` is a JSON-able list of ``{path, message}`` or similar."""

    code = "INTERNAL_ERROR"

    def __init__(self, message: str, details: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or []

    def to_body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message, "details": self.details}}


class InvalidInput(TreelineError):
    """A request that fails validation; ``details`` names each offending field."""

    code = "INVALID_INPUT"


class NotFound(TreelineError):
    code = "NOT_FOUND"


class Conflict(TreelineError):
    """The request contradicts current state (duplicate, stale version, in use)."""

    code = "CONFLICT"


class IntegrityError(TreelineError):
    """Bytes that do not match their declared digest."""

    code = "INTEGRITY_ERROR"


class Unschedulable(TreelineError):
    """No plan satisfies the request; ``details`` carries the reasons."""

    code = "UNSCHEDULABLE"


class Unavailable(TreelineError):
    """A dependency (cluster, node, broker) cannot be reached right now."""

    code = "UNAVAILABLE"


_HTTP_STATUS = {
    InvalidInput.code: 400,
    NotFound.code: 404,
    Conflict.code: 409,
    IntegrityError.code: 422,
    Unschedulable.code: 422,
    Unavailable.code: 503,
    TreelineError.code: 500,
}

_BY_CODE = {cls.code: cls for cls in (TreelineError, InvalidInput, NotFound, Conflict, IntegrityError,
                                       Unschedulable, Unavailable)}


def http_status(error: TreelineError) -> int:
    return _HTTP_STATUS.get(error.code, 500)


def from_body(body: Any, fallback_message: str = "request failed") -> TreelineError:
    """Rebuild the error a server sent as ``{"error": {code, message, details}}``."""
    err = body.get("error") if isinstance(body, dict) else None
    if not isinstance(err, dict):
        return TreelineError(fallback_message)
    cls = _BY_CODE.get(str(err.get("code")), TreelineError)
    return cls(str(err.get("message", fallback_message)), list(err.get("details") or []))
