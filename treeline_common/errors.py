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


class Unauthorized(TreelineError):
    """No valid credentials: missing, malformed, forged, expired or revoked (HTTP 401).

    A client MAY refresh its token or log in and retry once; ``details`` name the header."""

    code = "UNAUTHORIZED"


class Forbidden(TreelineError):
    """Valid credentials whose role may not use the route (HTTP 403). Never used for another
    user's objects: those are NotFound, so their existence is not revealed."""

    code = "FORBIDDEN"


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


class CorruptArtifact(IntegrityError):
    """Stored bytes that no longer hash to the digest they are stored under (a damaged file).

    Never served as good: the holder answers 409 until the right bytes are uploaded again,
    which replaces the damaged copy."""

    code = "CORRUPT_ARTIFACT"


class Unavailable(TreelineError):
    """A dependency (cluster, node, broker) cannot be reached right now."""

    code = "UNAVAILABLE"


class PayloadTooLarge(TreelineError):
    """A request body over the route's size limit; ``details`` name the limit in bytes."""

    code = "PAYLOAD_TOO_LARGE"


class UnsupportedMediaType(TreelineError):
    """A request body of a content type the route does not take; ``details`` list the accepted ones."""

    code = "UNSUPPORTED_MEDIA_TYPE"


# Reason prefix a node engine reports (``StateReport.reason``) when downloaded bytes do not hash to
# the digest its deploy command named: ``"sha256 mismatch: expected X got Y"``. A cluster seeing it
# knows its copy (or the transfer) is bad and fetches the artifact again instead of retrying as is.
SHA256_MISMATCH = "sha256 mismatch"
# Reason prefixes of the node's other refusals (node_engine.refusals): a partition that does not fit
# in the memory the node offers, and a command that does not decode or makes no sense.
MEMORY_LIMIT = "memory limit exceeded"
BAD_COMMAND = "bad command"


_HTTP_STATUS = {
    InvalidInput.code: 400,
    Unauthorized.code: 401,
    Forbidden.code: 403,
    NotFound.code: 404,
    Conflict.code: 409,
    IntegrityError.code: 422,
    CorruptArtifact.code: 409,
    PayloadTooLarge.code: 413,
    UnsupportedMediaType.code: 415,
    Unschedulable.code: 422,
    Unavailable.code: 503,
    TreelineError.code: 500,
}

_BY_CODE = {cls.code: cls for cls in (TreelineError, InvalidInput, Unauthorized, Forbidden, NotFound,
                                       Conflict, IntegrityError, CorruptArtifact, Unschedulable, Unavailable,
                                       PayloadTooLarge, UnsupportedMediaType)}


def http_status(error: TreelineError) -> int:
    return _HTTP_STATUS.get(error.code, 500)


def from_body(body: Any, fallback_message: str = "request failed") -> TreelineError:
    """Rebuild the error a server sent as ``{"error": {code, message, details}}``."""
    err = body.get("error") if isinstance(body, dict) else None
    if not isinstance(err, dict):
        return TreelineError(fallback_message)
    cls = _BY_CODE.get(str(err.get("code")), TreelineError)
    return cls(str(err.get("message", fallback_message)), list(err.get("details") or []))
