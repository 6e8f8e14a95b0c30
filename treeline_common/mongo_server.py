"""Start the embedded MongoDB wire-protocol server (``nx-27017``) as a child process.

The zero-setup store of ``treeline up`` and of the test suite: a real MongoDB wire-protocol
server in its own OS process on a loopback port, data on SQLite under ``data_dir`` (one
``<database>.db`` file per database), so the root and the clusters run the same pymongo code
on a laptop as against a real MongoDB in production (``--mongo-url``).

Known limits (measured, see design/pitfalls.md): about 550 inserts/s; the server ignores cursor
batch sizes, so a single reply over 48 MB fails (GridFS reads are bounded for that reason, see
:mod:`root_orchestrator.stores.gridfs_reader`).

This module imports no Flask and no pymongo at import time (pymongo only to ``ping``), so the
stack and the tests can both use it.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from treeline_common.netutil import free_port, poll_until
from treeline_common.shutdown import die_with_parent

log = logging.getLogger(__name__)

ROOT_DATABASE = "treeline"  # the root's database; cluster i's is treeline_cluster_<i> (treeline up)
LOG_NAME = "mongo.log"
URL_NAME = "url"  # <data_dir>/url: where the server on this data dir listens, while it runs
PID_NAME = "mongo.pid"


@dataclass
class MongoServerProcess:
    """A running ``nx-27017`` child and where it listens; :meth:`stop` ends it (idempotent)."""

    host: str
    port: int
    data_dir: Path
    process: subprocess.Popen[bytes]
    command: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        """``mongodb://host:port`` (append ``/<database>`` for a store URL)."""
        return f"mongodb://{self.host}:{self.port}"

    def db_url(self, database: str) -> str:
        return f"{self.url}/{database}"

    @property
    def log_path(self) -> Path:
        return self.data_dir / LOG_NAME

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (the server commits and closes its SQLite files), SIGKILL after ``timeout``."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                log.warning("MongoDB wire server pid %d ignored SIGTERM; killing it", self.process.pid)
                self.process.kill()
                self.process.wait(timeout=timeout)


def server_args(data_dir: Path, host: str, port: int) -> list[str]:
    """``python -m`` arguments of an ``nx-27017`` server with its databases in ``data_dir/db`` and
    its log and pid files in ``data_dir``."""
    return ["nx_27017.nx_27017", "--data-dir", str(data_dir / "db"), "--host", host, "-p", str(port),
            "--log-file", str(data_dir / LOG_NAME), "--pid-file", str(data_dir / PID_NAME)]


def database_url(base: str, database: str) -> str:
    """``base`` (``mongodb://host:port[/db][?options]``) naming ``database`` instead, options kept:
    the stack gives the root and each cluster its own database on one server."""
    parsed = urlsplit(base)
    return urlunsplit((parsed.scheme, parsed.netloc, f"/{database}", parsed.query, ""))


def wait_answering(url: str, alive: Callable[[], bool], timeout: float) -> None:
    """Poll (with a deadline) until the server at ``url`` answers ``ping``; RuntimeError as soon as
    ``alive()`` says its process has exited, TimeoutError if it never answers."""
    poll_until(lambda: not alive() or ping(url, timeout_s=0.5), timeout, interval=0.1,
               what=f"MongoDB wire server at {url}")
    if not alive():
        raise RuntimeError(f"the MongoDB wire server for {url} exited while starting")


def ping(url: str, timeout_s: float = 1.0) -> bool:
    """True when a MongoDB server at ``url`` answers ``ping`` within ``timeout_s``."""
    import pymongo  # only here: importing this module must stay cheap

    client: pymongo.MongoClient[dict[str, object]] = pymongo.MongoClient(
        url, serverSelectionTimeoutMS=int(timeout_s * 1000), connectTimeoutMS=int(timeout_s * 1000))
    try:
        return bool(client.admin.command("ping").get("ok"))
    finally:
        client.close()


def start_mongo_server(data_dir: Path, port: int | None = None, host: str = "127.0.0.1",
                       timeout: float = 30.0) -> MongoServerProcess:
    """Start ``nx-27017`` on ``host:port`` (a free port by default) with its data under ``data_dir``
    and wait (polling, with a deadline) until it answers ``ping``.

    Data persists: a later start on the same ``data_dir`` sees the same databases. Raises
    RuntimeError if the server exits while starting, TimeoutError if it never answers.
    """
    data_dir = Path(data_dir)
    (data_dir / "db").mkdir(parents=True, exist_ok=True)
    port = port or free_port(host)
    cmd = [sys.executable, "-m", *server_args(data_dir, host, port)]
    with open(data_dir / "mongo.stdout", "ab") as out:  # the child keeps its own descriptor
        process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   preexec_fn=die_with_parent)
    server = MongoServerProcess(host, port, data_dir, process, cmd)

    try:
        wait_answering(server.url, server.alive, timeout)
    except RuntimeError as exc:
        raise RuntimeError(f"{exc} (exit code {process.returncode}); see {server.log_path}") from None
    except Exception:
        server.stop()
        raise
    log.info("MongoDB wire server (nx-27017) on %s, data in %s", server.url, data_dir)
    write_url(data_dir, server.url)
    return server


def write_url(data_dir: Path, url: str) -> None:
    """Record where the server on ``data_dir`` listens, for tools that open the same store
    (``treeline admin create``); :func:`running_url` reads it."""
    (Path(data_dir) / URL_NAME).write_text(url + "\n")


def running_url(data_dir: Path, timeout_s: float = 1.0) -> str | None:
    """The URL of the server running on ``data_dir`` (one that answers ``ping``), else None."""
    try:
        url = (Path(data_dir) / URL_NAME).read_text().strip()
    except OSError:
        return None
    return url if url and ping(url, timeout_s) else None
