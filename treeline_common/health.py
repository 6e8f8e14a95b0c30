"""Who answers: the body of every Treeline process's ``GET /api/health``.

Why: ``treeline up`` must tell its own processes from another stack's that happens to listen
on the same port (a leftover from an earlier run, a colleague's stack). A port that answers
``{status: ok}`` proves nothing; an ``instance_id`` the CLI saw its own process report does.
Root and cluster answer the same shape, written here once.
"""

from __future__ import annotations

from importlib import metadata
from typing import Literal, TypedDict


class HealthBody(TypedDict):
    """``GET /api/health``: ``instance_id`` MUST stay the same while the process runs and change
    when it restarts; ``name`` says which process it is (``root``, or the cluster's name)."""

    status: Literal["ok"]
    instance_id: str
    name: str
    version: str


def package_version() -> str:
    """The installed ``treeline`` distribution's version (``"unknown"`` when run from a bare tree)."""
    try:
        return metadata.version("treeline")
    except metadata.PackageNotFoundError:
        return "unknown"


def health_body(instance_id: str, name: str) -> HealthBody:
    """What a live process answers to ``GET /api/health``, with this installation's version."""
    return {"status": "ok", "instance_id": instance_id, "name": name, "version": package_version()}
