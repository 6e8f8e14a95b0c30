"""The stack's store: one MongoDB for the root and every cluster, embedded or external.

By default the stack starts the embedded MongoDB wire-protocol server (``nx-27017``,
:mod:`.mongo_server`) as its own child process, ``mongo`` in :attr:`Stack.processes
<treeline_cli.stack.Stack.processes>` (so ``treeline logs mongo`` and the fault-injection calls
``kill``/``freeze``/``restart`` reach it like any other child), on a free loopback port, its
databases in ``<data_dir>/mongo/db``: they persist across ``treeline down``/``up``. It starts
first and stops last. With ``StackConfig.mongo_url`` (``treeline up --mongo-url URL``) the stack
uses that MongoDB and starts none; it must answer ``ping`` before anything else starts.

Each part has its own database on the one server: the root ``treeline``, cluster ``i``
``treeline_cluster_<i>``.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

from treeline_cli.stack_config import StackConfig
from treeline_common.mongo_server import ROOT_DATABASE, database_url, server_args, wait_answering, write_url
from treeline_common.netutil import free_port


class Spawner(Protocol):
    """What :func:`start_store` needs of a :class:`treeline_cli.stack.Stack` (no import cycle)."""

    config: StackConfig

    def spawn(self, name: str, args: list[str], env: dict[str, str] | None = None) -> Any: ...

log = logging.getLogger(__name__)

MONGO_PROCESS = "mongo"


def cluster_database(index: int) -> str:
    """The database of cluster ``index`` (1-based)."""
    return f"treeline_cluster_{index}"


def start_store(stack: Spawner, timeout: float) -> str:
    """Start the embedded server (unless the config names an external MongoDB) and wait until it
    answers; returns the server's ``mongodb://`` URL. RuntimeError if the embedded server exits
    while starting, TimeoutError if the server does not answer within ``timeout`` seconds."""
    config = stack.config
    if config.mongo_url:
        wait_answering(config.mongo_url, lambda: True, timeout)
        log.info("using the external MongoDB at %s", config.mongo_url.split("@")[-1])
        return config.mongo_url
    port = config.mongo_port or free_port(config.host)
    data_dir = config.data_dir / MONGO_PROCESS
    (data_dir / "db").mkdir(parents=True, exist_ok=True)
    managed = stack.spawn(MONGO_PROCESS, server_args(data_dir, config.host, port))
    url = f"mongodb://{config.host}:{port}"
    wait_answering(url, managed.alive, timeout)
    write_url(data_dir, url)
    return url


def root_store_url(base: str) -> str:
    return database_url(base, ROOT_DATABASE)


def cluster_store_url(base: str, index: int) -> str:
    return database_url(base, cluster_database(index))
