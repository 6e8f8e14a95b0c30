"""Why a Flower process ended, as one clean line (what a ``FAILED`` report and its event carry).

Flower logs multi-line tracebacks and gRPC reprs (``<_MultiThreadedRendezvous ... status =
StatusCode.UNAVAILABLE details = "Socket closed" ...>``) to the process's stderr; the node keeps
all of it in ``flower.log`` and reports only :func:`exit_reason`: ``flower client exited with
code 1 (connection to the server lost)``. Pure: the caller reads the log.
"""

from __future__ import annotations

import re
import signal

MAX_CAUSE_CHARS = 160
# Substrings of Flower's/gRPC's log that mean the peer went away (checked in this order).
_CONNECTION_LOST = ("StatusCode.UNAVAILABLE", "Socket closed", "Connection reset", "Connection refused",
                    "failed to connect to all addresses", "StatusCode.CANCELLED")
_EXCEPTION_LINE = re.compile(r"^(?:[A-Za-z_][\w.]*\.)?([A-Z]\w*(?:Error|Exception|Exit)): ?(.*)$")


def exit_cause(code: int, log_text: str) -> str:
    """The cause of an exit in a few words: the signal that killed it, a lost connection, the
    last exception line of the log, or its last non-empty line; '' when the log says nothing.

    ``code``: the process's return code (negative: killed by that signal, as :mod:`subprocess`
    reports it). Never more than :data:`MAX_CAUSE_CHARS` characters, never a newline.
    """
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    if any(marker in log_text for marker in _CONNECTION_LOST):
        return "connection to the server lost"
    lines = [line.strip() for line in log_text.splitlines() if line.strip()]
    for line in reversed(lines):
        match = _EXCEPTION_LINE.match(line)
        if match:
            return _clip(f"{match.group(1)}: {match.group(2)}" if match.group(2) else match.group(1))
    return _clip(lines[-1]) if lines else ""


def exit_reason(role: str, code: int, log_text: str) -> str:
    """``flower <role> exited with code <code> (<cause>)``: one line (see :func:`exit_cause`)."""
    cause = exit_cause(code, log_text)
    return f"flower {role} exited with code {code}" + (f" ({cause})" if cause else "")


def _clip(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= MAX_CAUSE_CHARS else text[:MAX_CAUSE_CHARS - 1] + "…"
