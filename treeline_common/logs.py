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
"""

from __future__ import annotations

import logging
import re
import sys
from typing import TextIO

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

# CSI sequences (colours, cursor moves: ESC [ params intermediates final) and two-byte escapes.
_ANSI_ESCAPE = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|[@-Z\\-_])")


def strip_ansi(text: str) -> str:
    """``text`` without ANSI escape sequences; a stray ESC byte left over is dropped too."""
    return _ANSI_ESCAPE.sub("", text).replace("\x1b", "")


class PlainFormatter(logging.Formatter):
    """A :class:`logging.Formatter` whose output never contains an escape sequence
    (message, arguments and traceback included)."""

    def format(self, record: logging.LogRecord) -> str:
        return strip_ansi(super().format(record))


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


def setup_logging(level: str | int = "INFO", tag: str | None = None, stream: TextIO | None = None) -> None:
    """Send every record of this process, as plain lines, to ``stream`` (default stderr).

    Replaces the root logger's handlers with one handler using :class:`PlainFormatter`, and
    makes werkzeug's logger (the request log of the Flask servers) a plain child of it: no
    handler of its own, the same level.
    """
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(PlainFormatter(log_format(tag)))
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
