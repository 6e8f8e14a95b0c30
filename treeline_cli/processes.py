"""One child process of a stack, with the command line it was started with, and its log.

:class:`~treeline_cli.stack.Stack` starts each child; a :class:`ManagedProcess` is what it keeps
of it, so that fault injection can kill (SIGKILL), freeze (SIGSTOP), thaw (SIGCONT) and stop
(SIGTERM, then SIGKILL) that one child. :func:`tail` and :func:`last_error` read its log for
error messages.
"""

from __future__ import annotations

import logging
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

log = logging.getLogger(__name__)


@dataclass
class ManagedProcess:
    """One child process and the ``python -m`` arguments it was started with."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    log_file: IO[bytes]
    args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)  # set on top of this process's environment
    frozen: bool = False
    # what this launch reports in GET /api/health (a fresh one per launch; see the module docstring)
    instance_id: str = ""
    started_at: float = 0.0  # wall clock (time.time()) of the launch

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self, timeout: float = 10.0) -> None:
        """SIGKILL and reap: a crash (no will sent, nothing flushed). Idempotent."""
        if self.alive():
            self.process.kill()
        self.process.wait(timeout=timeout)
        self.frozen = False

    def freeze(self) -> None:
        """SIGSTOP: the process keeps its sockets open but answers nothing (a hung device)."""
        if self.alive():
            self.process.send_signal(signal.SIGSTOP)
            self.frozen = True

    def thaw(self) -> None:
        """SIGCONT after :meth:`freeze`."""
        if self.alive():
            self.process.send_signal(signal.SIGCONT)
        self.frozen = False

    def terminate(self, timeout: float = 8.0) -> None:
        """SIGTERM (thawing a frozen process so it can act on it), SIGKILL after ``timeout``."""
        self.request_stop()
        self.wait_or_kill(timeout)

    def request_stop(self) -> None:
        """Send SIGTERM (and SIGCONT to a frozen process); does not wait."""
        if self.alive():
            self.process.send_signal(signal.SIGTERM)
            if self.frozen:
                self.thaw()

    def wait_or_kill(self, timeout: float) -> None:
        """Wait ``timeout`` seconds for the process to exit, then SIGKILL it."""
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            log.warning("%s did not stop in %.0fs; killing it", self.name, timeout)
            self.kill(timeout)


def tail(path: Path, lines: int = 30) -> str:
    """The last lines of a log file, for error messages."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def last_error(path: Path, lines: int = 30) -> str:
    """The message of the last ERROR/CRITICAL line among the last ``lines`` of a log ("" if none)."""
    for line in reversed(tail(path, lines).splitlines()):
        for level in (" ERROR ", " CRITICAL "):
            if level in line:
                message = line.split(level, 1)[1]
                return message.split(": ", 1)[1] if ": " in message else message
    return ""
