"""What the ``treeline`` command does with an error: one line on stderr, and an exit code.

Contract: every error the user can cause or meet ends the command with exactly ONE line on
stderr, ``error: <what went wrong>; <what to do>``, and no traceback (``-v`` adds it).
Exit codes:

* ``2``, usage errors: bad options, an unknown command, a value out of range, an unknown
  profile, a missing or non-JSON file, an invalid configuration or SLA, an ambiguous name;
* ``1``, failures: the root is unreachable, a deployment failed, something was not found,
  a timeout, anything unexpected;
* ``130`` on Ctrl-C.

A few failures carry more information than a line can hold (a deployment that cannot be
scheduled has a reason per node): :attr:`CliError.extra` lines follow the error line.
"""

from __future__ import annotations

from collections.abc import Sequence

import click

from treeline_cli.root_client import DeploymentFailed, RootUnreachable, UnsupportedByRoot
from treeline_common.config import ConfigError
from treeline_common.errors import InvalidInput, NotFound, TreelineError

USAGE = 2
FAILURE = 1
INTERRUPTED = 130


class CliError(Exception):
    """An error the command reports itself: ``message``, then ``hint`` (what to do)."""

    exit_code = FAILURE

    def __init__(self, message: str, hint: str = "", extra: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.extra = list(extra)

    def line(self) -> str:
        return f"{self.message}; {self.hint}" if self.hint else self.message


class UsageError(CliError):
    """The command line (or a file or setting it names) cannot be used as given."""

    exit_code = USAGE


class Failure(CliError):
    """The command was fine but what it asked for did not happen."""

    exit_code = FAILURE


def _details(exc: TreelineError, limit: int = 3) -> str:
    """The first ``limit`` details as ``path: message``; one the message already says is left out."""
    rendered = [f"{d.get('path')}: {d.get('message')}" if d.get("path") else str(d.get("message", d))
                for d in exc.details]
    fresh = [text for text in rendered if text not in exc.message]
    parts = fresh[:limit]
    more = len(fresh) - limit
    if more > 0:
        parts.append(f"and {more} more")
    return "; ".join(parts)



class MissingCommand(click.UsageError):
    """A command group called without a command. click 8.2 raises ``NoArgsIsHelpError`` for it;
    click 8.1 (what a stack with flwr's pins resolves to) printed the help and exited 0."""


class TreelineGroup(click.Group):
    """A click group that refuses a missing command the same way under every click version."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if not args and self.no_args_is_help and not ctx.resilient_parsing:
            raise MissingCommand("missing command", ctx=ctx)
        return super().parse_args(ctx, args)


_NO_COMMAND: tuple[type[BaseException], ...] = tuple(
    t for t in (MissingCommand, getattr(click.exceptions, "NoArgsIsHelpError", None)) if isinstance(t, type))

def classify(exc: BaseException) -> CliError:
    """The one-line report and exit code of any exception a command can raise."""
    if isinstance(exc, CliError):
        return exc
    if isinstance(exc, _NO_COMMAND) and isinstance(exc, click.UsageError):
        commands = ", ".join(getattr(exc.ctx.command, "commands", {})) if exc.ctx is not None else ""
        return UsageError(f"missing command{' (one of: ' + commands + ')' if commands else ''}",
                          "see `treeline --help`")
    if isinstance(exc, click.UsageError):
        command = exc.ctx.command_path if exc.ctx is not None else "treeline"
        message = " ".join(exc.format_message().split()).rstrip(".")
        return UsageError(message, f"see `{command} --help`")
    if isinstance(exc, click.ClickException):
        return UsageError(exc.format_message().replace("\n", " "))
    if isinstance(exc, ConfigError):
        kind, _, where = exc.source.partition(" ")
        hint = {"flag": f"fix {where}", "env": f"fix or unset {where}", "file": f"fix it in {where}",
                "default": "set it (`treeline config show` lists every setting)"}.get(kind, "fix the file")
        return UsageError(f"invalid setting {exc.message}", hint)
    if isinstance(exc, RootUnreachable):
        return Failure(exc.message, "is it running? Start it with `treeline up`, or pass --root-url "
                                    "(or set TREELINE_ROOT_URL)")
    if isinstance(exc, UnsupportedByRoot):
        return Failure(exc.message, "upgrade the root orchestrator")
    if isinstance(exc, InvalidInput):
        detail = _details(exc)
        return UsageError(f"{exc.message}{': ' + detail if detail else ''}", "fix the input and retry")
    if isinstance(exc, NotFound):  # with the field that named it (``...training.model``) unless said
        detail = _details(exc) if exc.details and str(exc.details[0].get("path")) not in exc.message else ""
        return Failure(f"{exc.message}{': ' + detail if detail else ''}",
                       "list what exists with `treeline get`")
    if isinstance(exc, DeploymentFailed):
        return Failure(exc.message, "see `treeline describe service <name>`")
    if isinstance(exc, TreelineError):
        detail = _details(exc)
        return Failure(f"{exc.message}{': ' + detail if detail else ''}")
    if isinstance(exc, TimeoutError):
        return Failure(f"timed out: {exc}", "the stack may be overloaded; retry with a longer --timeout")
    if isinstance(exc, FileNotFoundError):
        return UsageError(f"no such file: {exc.filename}", "check the path")
    if isinstance(exc, OSError):
        return Failure(f"{exc.strerror or exc}{': ' + str(exc.filename) if exc.filename else ''}")
    return Failure(f"internal error: {type(exc).__name__}: {exc}",
                   "run again with -v for the traceback and report it")
