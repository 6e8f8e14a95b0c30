"""What every blueprint needs, handed over by the app factory: no blueprint imports the app.

:func:`install` stores one :class:`RootContext` in ``app.extensions`` when the app is built;
:func:`ctx` reads it back while a request is handled. The context is built once per app and
never replaced, so a blueprint registered on several apps (tests build many) always sees the
stores, clock and cluster client of the app that is handling the request.
"""

from __future__ import annotations

from dataclasses import dataclass

from flask import Flask, current_app

from root_orchestrator.apply import Applier
from root_orchestrator.cluster_client import ClusterClient
from root_orchestrator.dryrun import DryRun
from root_orchestrator.failover import ClusterFailover
from root_orchestrator.instances import InstanceManager
from root_orchestrator.stores import Stores
from treeline_common.clock import Clock

EXTENSION = "treeline_root"


@dataclass(frozen=True)
class RootContext:
    """The root's injected dependencies; ``public_url`` has no trailing slash; ``instance_id``
    names this process in ``GET /api/health`` (:mod:`root_orchestrator.identity`); ``failover``
    is built but not started (``python -m root_orchestrator`` starts it)."""

    stores: Stores
    clock: Clock
    cluster_client: ClusterClient
    public_url: str
    active_window_s: float
    instances: InstanceManager
    applier: Applier
    dryrun: DryRun
    instance_id: str
    failover: ClusterFailover


def install(app: Flask, context: RootContext) -> None:
    """Attach ``context`` to ``app``; MUST be called once, before the app serves a request."""
    if EXTENSION in app.extensions:
        raise RuntimeError(f"{app.name} already has a {EXTENSION} context")
    app.extensions[EXTENSION] = context


def context_of(app: Flask) -> RootContext:
    """The context :func:`install` attached to ``app`` (outside a request too)."""
    context = app.extensions[EXTENSION]
    if not isinstance(context, RootContext):
        raise RuntimeError(f"app.extensions[{EXTENSION!r}] is not a RootContext: {context!r}")
    return context


def ctx() -> RootContext:
    """The context of the app handling the current request (only valid inside a request)."""
    context = current_app.extensions[EXTENSION]
    if not isinstance(context, RootContext):
        raise RuntimeError(f"app.extensions[{EXTENSION!r}] is not a RootContext: {context!r}")
    return context
