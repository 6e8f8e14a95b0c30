"""Plain-text logs for every Treeline process: one format, no colour codes.

Why: each process ``treeline up`` starts writes to a file under ``<data_dir>/logs/``, which
operators read with ``treeline logs``, ``grep`` and ``less``. Libraries decide on their own to
colour their output: werkzeug wraps the request line of every non-200 answer in ANSI escapes
(``\\x1b[33m``) whether or not anyone reads it on a terminal. :class:`PlainFormatter` removes
every escape sequence from the final line, whoever produced it, and :func:`setup_logging`
routes werkzeug's logger through the root handler so that it cannot add a colouring handler
of its own.

Contract: after :func:`setup_logging`, every record of the process is written as one line
``<time> <LEVEL> [<tag>] <logger>: <message>`` (``[<tag>]`` only when given, e.g. a node's
name) to ``stream`` (stderr by default), and no line contains the byte ``\\x1b``.
:func:`setup_logging` replaces the root logger's handlers, so calling it again (or a later
``logging.basicConfig``, which is then a no-op) never doubles the lines.

**Request and deployment ids.** :func:`log_context` binds a request id and a deployment id to
the current :mod:`contextvars` context (a thread, or a Flask request: see
:mod:`treeline_common.request_context`); :class:`ContextFilter`, on the one handler, copies them
onto every record as ``record.request_id`` / ``record.deployment_id`` ("" when unset; an
``extra={"request_id": ...}`` given to the call wins). A plain line then ends with
`` request_id=<id> deployment_id=<id>``, each only when set, so a line without context is
unchanged. A new thread starts with an empty context (run it in ``contextvars.copy_context()``
to carry the ids over).

**JSON lines.** ``TREELINE_LOG_FORMAT=json`` (or ``setup_logging(fmt="json")``) writes one JSON
object per line instead: ``{"ts", "level", "logger", "message", "request_id", "deployment_id",
"exc"}`` (``ts`` ISO 8601 UTC with milliseconds, ``exc`` the traceback or null; ``"tag"`` too
when the process has one), for log shippers. An unknown value writes plain lines and says so.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar, Token
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TextIO

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
LOG_FORMAT_ENV = "TREELINE_LOG_FORMAT"
LOG_FORMATS = ("plain", "json")

# the ids of what the current thread (or Flask request) works on; "" = none
_REQUEST_ID: ContextVar[str] = ContextVar("treeline_request_id", default="")
_DEPLOYMENT_ID: ContextVar[str] = ContextVar("treeline_deployment_id", default="")

# CSI sequences (colours, cursor moves: ESC [ params intermediates final) and two-byte escapes.
_ANSI_ESCAPE = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|[@-Z\\-_])")


def strip_ansi(text: str) -> str:
    """``text`` without ANSI escape sequences; a stray ESC byte left over is dropped too."""
    return _ANSI_ESCAPE.sub("", text).replace("\x1b", "")


@dataclass(frozen=True)
class LogContext:
    """The ids bound to the current context ("" = unset)."""

    request_id: str = ""
    deployment_id: str = ""


def current_log_context() -> LogContext:
    """The ids :func:`log_context` bound in the current context."""
    return LogContext(_REQUEST_ID.get(), _DEPLOYMENT_ID.get())


BoundIds = tuple["Token[str] | None", "Token[str] | None"]


def bind_log_context(request_id: str | None = None, deployment_id: str | None = None) -> BoundIds:
    """Bind the ids (None keeps the outer value) until :func:`unbind_log_context` of the result,
    which must run in the same context. For hooks that cannot use :func:`log_context` (Flask's
    before/teardown request)."""
    return (None if request_id is None else _REQUEST_ID.set(request_id),
            None if deployment_id is None else _DEPLOYMENT_ID.set(deployment_id))


def unbind_log_context(bound: BoundIds) -> None:
    """Restore the ids :func:`bind_log_context` replaced; "" when the tokens belong to another
    context (a Flask request torn down elsewhere), never an error."""
    for var, token in zip((_REQUEST_ID, _DEPLOYMENT_ID), bound, strict=True):
        if token is None:
            continue
        try:
            var.reset(token)
        except ValueError:  # created in another context
            var.set("")


@contextmanager
def log_context(request_id: str | None = None, deployment_id: str | None = None) -> Iterator[None]:
    """Every record logged inside the block (in this thread or task) carries these ids; None
    keeps the outer value. Cheap (two ContextVar sets), but meant for logging paths, not per
    message on a hot path."""
    bound = bind_log_context(request_id, deployment_id)
    try:
        yield
    finally:
        unbind_log_context(bound)


def _stamp(record: logging.LogRecord) -> LogContext:
    """Put the context's ids on ``record`` unless it has its own (``extra=``); return them."""
    ids = record.__dict__
    request_id = ids.setdefault("request_id", _REQUEST_ID.get())
    deployment_id = ids.setdefault("deployment_id", _DEPLOYMENT_ID.get())
    return LogContext(str(request_id or ""), str(deployment_id or ""))


class ContextFilter(logging.Filter):
    """Sets ``record.request_id`` and ``record.deployment_id`` from :func:`log_context` ("" when
    unset) on every record; never drops one. Put it on a handler: a logger's filters do not see
    the records of its children."""

    def filter(self, record: logging.LogRecord) -> bool:
        _stamp(record)
        return True


def context_suffix(ids: LogContext) -> str:
    """`` request_id=<id> deployment_id=<id>``, each part only when set; "" for none."""
    parts = [f"{name}={value}" for name, value in
             (("request_id", ids.request_id), ("deployment_id", ids.deployment_id)) if value]
    return " " + " ".join(parts) if parts else ""


class PlainFormatter(logging.Formatter):
    """A :class:`logging.Formatter` whose output never contains an escape sequence
    (message, arguments and traceback included); the message line ends with the
    record's ids (:func:`context_suffix`), before any traceback."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        return super().formatMessage(record) + context_suffix(_stamp(record))

    def format(self, record: logging.LogRecord) -> str:
        return strip_ansi(super().format(record))


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line: ``ts`` (ISO 8601 UTC, ms), ``level``, ``logger``,
    ``message`` (arguments applied, escapes stripped), ``request_id``, ``deployment_id`` ("" when
    unset), ``exc`` (the formatted traceback, or null) and ``tag`` when given."""

    def __init__(self, tag: str | None = None) -> None:
        super().__init__()
        self._tag = tag

    def format(self, record: logging.LogRecord) -> str:
        ids = _stamp(record)
        exc = None
        if record.exc_info:
            exc = strip_ansi(self.formatException(record.exc_info))
        elif record.exc_text:
            exc = strip_ansi(record.exc_text)
        if record.stack_info:
            exc = (exc + "\n" if exc else "") + self.formatStack(record.stack_info)
        doc: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, tz=UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname, "logger": record.name, "message": strip_ansi(record.getMessage()),
            "request_id": ids.request_id, "deployment_id": ids.deployment_id, "exc": exc}
        if self._tag:
            doc["tag"] = self._tag
        return json.dumps(doc, ensure_ascii=False, default=str)


def log_format(tag: str | None = None) -> str:
    """The line format, with ``[tag]`` after the level when ``tag`` is given."""
    return LOG_FORMAT if not tag else f"%(asctime)s %(levelname)s [{tag}] %(name)s: %(message)s"


def parse_level(level: str | int) -> int:
    """``"info"``/``"INFO"``/``20`` -> 20; ValueError naming the known levels otherwise."""
    if isinstance(level, int):
        return level
    name = level.strip().upper()
    if name not in LOG_LEVELS:
        raise ValueError(f"unknown log level {level!r}; known: {', '.join(LOG_LEVELS)}")
    return int(logging.getLevelName(name))


def log_format_from_env(environ: Mapping[str, str] | None = None) -> tuple[str, str | None]:
    """``(format, problem)`` from ``$TREELINE_LOG_FORMAT``: "plain" when unset or empty; an
    unknown value gives "plain" and the sentence saying so (the caller logs it)."""
    raw = (os.environ if environ is None else environ).get(LOG_FORMAT_ENV, "").strip().lower()
    if not raw or raw in LOG_FORMATS:
        return raw or "plain", None
    return "plain", (f"{LOG_FORMAT_ENV}={raw[:40]!r} is unknown (known: {', '.join(LOG_FORMATS)}); "
                     "writing plain lines")


def setup_logging(level: str | int = "INFO", tag: str | None = None, stream: TextIO | None = None,
                  fmt: str | None = None) -> None:
    """Send every record of this process, as plain lines (or JSON lines), to ``stream`` (default stderr).

    Replaces the root logger's handlers with one handler using :class:`PlainFormatter` (or
    :class:`JsonFormatter` when ``fmt`` is "json"; None reads ``$TREELINE_LOG_FORMAT``) and a
    :class:`ContextFilter`, and makes werkzeug's logger (the request log of the Flask servers) a
    plain child of it: no handler of its own, the same level. ValueError naming the known formats
    for an unknown ``fmt``.
    """
    problem = None
    if fmt is None:
        fmt, problem = log_format_from_env()
    if fmt not in LOG_FORMATS:
        raise ValueError(f"unknown log format {fmt!r}; known: {', '.join(LOG_FORMATS)}")
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter(tag) if fmt == "json" else PlainFormatter(log_format(tag)))
    handler.addFilter(ContextFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(parse_level(level))
    werkzeug = logging.getLogger("werkzeug")
    for old in list(werkzeug.handlers):
        werkzeug.removeHandler(old)
    werkzeug.propagate = True
    werkzeug.setLevel(root.level)  # werkzeug would set INFO itself when unset, ignoring ``level``
    if problem:
        logging.getLogger(__name__).warning("%s", problem)
