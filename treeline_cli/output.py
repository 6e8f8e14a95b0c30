"""Where the ``treeline`` command writes, and how.

Contract:

* stdout carries the command's result and nothing else: a table, or with ``-o json`` / ``-o yaml``
  exactly one JSON / YAML document (so ``treeline get apps -o json | jq`` always works);
* stderr carries progress, warnings and errors. It goes through rich, which writes colour
  and spinners only when stderr is a terminal; otherwise plain lines.
* A step that takes longer than a second always shows: a spinner on a terminal, else one
  line ``<step> ...`` printed once the second has passed.
"""

from __future__ import annotations

import contextlib
import json
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, TextIO

import yaml
from rich.console import Console
from rich.table import Table
from rich.text import Text


class Format(StrEnum):
    TABLE = "table"
    JSON = "json"
    YAML = "yaml"


FORMATS = tuple(f.value for f in Format)
SLOW_STEP_S = 1.0


def plural(count: int, word: str, many: str | None = None) -> str:
    """``1 stage``, ``2 stages``, ``0 stages``; ``many`` for irregular plurals."""
    return f"{count} {word if count == 1 else (many or word + 's')}"


def _plain(value: Any) -> Any:
    """JSON/YAML-safe copy (tuples as lists, paths and other objects as strings)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


@dataclass(frozen=True)
class Column:
    header: str
    cell: Callable[[dict[str, Any]], Any]


class Output:
    """The command's two streams. Built once per command from ``-o`` and ``-v``."""

    def __init__(self, fmt: str = Format.TABLE.value, verbose: int = 0,
                 stdout: TextIO | None = None, stderr: TextIO | None = None) -> None:
        self.format = Format(fmt)
        self.verbose = verbose
        self._stdout = stdout if stdout is not None else sys.stdout
        err = stderr if stderr is not None else sys.stderr
        self.err = Console(file=err, highlight=False, soft_wrap=True, emoji=False)
        tty = self._stdout.isatty()
        # off a terminal rich would wrap tables at 80 columns; a pipe gets whole lines
        self.out = Console(file=self._stdout, highlight=False, soft_wrap=True, emoji=False,
                           width=None if tty else 4096)

    @property
    def structured(self) -> bool:
        return self.format is not Format.TABLE

    # ---------------------------------------------------------------- stdout

    def document(self, doc: Any) -> None:
        """The whole result as one JSON or YAML document (``-o json|yaml``)."""
        plain = _plain(doc)
        if self.format is Format.YAML:
            self._stdout.write(yaml.safe_dump(plain, sort_keys=False, default_flow_style=False))
        else:
            self._stdout.write(json.dumps(plain, indent=2) + "\n")
        self._stdout.flush()

    def line(self, text: str = "") -> None:
        """A line of human-readable result on stdout (table format only)."""
        self.out.print(Text(text), crop=False)

    def table(self, rows: Sequence[dict[str, Any]], columns: Sequence[Column], empty: str = "") -> None:
        if not rows:
            if empty:
                self.warn(empty)
            return
        table = Table(box=None, pad_edge=False, show_edge=False, header_style="bold")
        for column in columns:
            table.add_column(column.header, no_wrap=True, overflow="ignore")
        for row in rows:
            table.add_row(*(Text("" if (v := column.cell(row)) is None else str(v)) for column in columns))
        with self.out.capture() as captured:
            self.out.print(table, crop=False)
        # rich pads every cell to its column's width; trailing blanks only get in a reader's way
        self._stdout.write("".join(line.rstrip() + "\n" for line in captured.get().splitlines()))
        self._stdout.flush()

    def result(self, doc: Any, render: Callable[[], None]) -> None:
        """``doc`` as JSON/YAML when asked for, else whatever ``render`` prints."""
        if self.structured:
            self.document(doc)
        else:
            render()

    # ---------------------------------------------------------------- stderr

    def info(self, text: str) -> None:
        self.err.print(Text(text), crop=False)

    def warn(self, text: str) -> None:
        self.err.print(Text(f"warning: {text}"), crop=False)

    def debug(self, text: str) -> None:
        if self.verbose:
            self.err.print(Text(text, style="dim"), crop=False)

    @contextlib.contextmanager
    def step(self, text: str) -> Iterator[Callable[[str], None]]:
        """Show ``text`` while the block runs if it takes longer than a second.

        Yields ``update(text)`` to change what is shown (e.g. a deployment's status). On a
        terminal it is a spinner; elsewhere each text shown is one line, printed once the step
        has run for a second, and later updates are printed as they come.
        """
        if self.err.is_terminal:
            with self.err.status(Text(text)) as status:
                yield lambda new: status.update(Text(new))
            return
        lock = threading.Lock()
        state = {"text": text, "shown": False, "last": ""}

        def show() -> None:
            with lock:
                state["shown"] = True
                if state["text"] != state["last"]:
                    self.info(f"{state['text']} ...")
                    state["last"] = state["text"]

        timer = threading.Timer(SLOW_STEP_S, show)
        timer.daemon = True
        started = time.monotonic()
        timer.start()

        def update(new: str) -> None:
            with lock:
                state["text"] = new
                if state["shown"] and new != state["last"]:
                    self.info(f"{new} ...")
                    state["last"] = new

        finished = False
        try:
            yield update
            finished = True
        finally:
            timer.cancel()
            with lock:
                if state["shown"] and finished:
                    self.info(f"{text}: done in {time.monotonic() - started:.1f} s")
