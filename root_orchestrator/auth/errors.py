"""401 and 403 as Treeline errors (``{"error": {code, message, details}}`` bodies).

They live here because :mod:`treeline_common.errors` has no 401/403 yet; the root installs its
own handler for them (:mod:`root_orchestrator.api.guard`). Clients see the codes
``UNAUTHORIZED`` and ``FORBIDDEN``.
"""

from __future__ import annotations

from treeline_common.errors import TreelineError


class Unauthorized(TreelineError):
    """No valid credentials: missing, malformed, forged, expired or revoked (HTTP 401)."""

    code = "UNAUTHORIZED"
    status = 401


class Forbidden(TreelineError):
    """Valid credentials whose role may not use the route (HTTP 403). Never used for another
    user's objects: those are NotFound, so their existence is not revealed."""

    code = "FORBIDDEN"
    status = 403


def unauthorized(reason: str) -> Unauthorized:
    return Unauthorized(f"authentication required: {reason}",
                        [{"path": "Authorization", "message": reason}])
