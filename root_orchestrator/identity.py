"""Who answers: the root's process identity, for ``GET /api/health``.

Why: ``treeline up`` must tell its own processes from another stack's that happens to listen
on the same port (a leftover from an earlier run, a colleague's stack). A port that answers
``{status: ok}`` proves nothing; an ``instance_id`` the CLI saw its own process report does.
``PROCESS_INSTANCE_ID`` is made once when the process imports this module (in practice at
start-up, before the server listens) and never changes while it runs; a restart makes a new one.
"""

from __future__ import annotations

import uuid
from importlib import metadata

PROCESS_INSTANCE_ID = str(uuid.uuid4())
SERVICE_NAME = "root"


def package_version() -> str:
    """The installed ``treeline`` distribution's version (``"unknown"`` when run from a bare tree)."""
    try:
        return metadata.version("treeline")
    except metadata.PackageNotFoundError:
        return "unknown"
