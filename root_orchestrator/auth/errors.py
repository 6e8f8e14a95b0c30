"""The root's 401 and 403: the shared :class:`~treeline_common.errors.Unauthorized` and
:class:`~treeline_common.errors.Forbidden` (codes ``UNAUTHORIZED``, ``FORBIDDEN``; their HTTP
statuses and ``WWW-Authenticate`` come from ``treeline_common``), and how the root words a 401.
"""

from __future__ import annotations

from treeline_common.errors import Forbidden, Unauthorized

__all__ = ["Forbidden", "Unauthorized", "unauthorized"]


def unauthorized(reason: str) -> Unauthorized:
    """The 401 of a request whose ``Authorization`` header is missing or not valid, saying why."""
    return Unauthorized(f"authentication required: {reason}",
                        [{"path": "Authorization", "message": reason}])
