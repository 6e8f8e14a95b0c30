"""What every command shares: settings flags, ``-v``, ``-o``, and the per-invocation state.

Settings flags (``--root-url``, ``--data-dir``, ...) and ``-v`` are accepted both before the
command (``treeline -v --root-url URL get apps``) and after it (``treeline get apps -v``); the
later spelling wins for settings, and ``-v`` counts everywhere. Their values are collected in
:class:`Invocation` by click callbacks, so command functions only take their own arguments
and call :func:`settings` and :func:`output`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import click

from treeline_cli.output import FORMATS, Format, Output
from treeline_cli.root_client import RootClient
from treeline_common.config import OPTIONS_BY_NAME, Settings, load_settings

F = TypeVar("F", bound=Callable[..., Any])


@dataclass
class Invocation:
    """State of one ``treeline`` run, shared by the group and the command (``ctx.obj``)."""

    flags: dict[str, Any] = field(default_factory=dict)
    verbose: int = 0
    config_file: Path | None = None
    format: str = Format.TABLE.value
    _settings: Settings | None = None

    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = load_settings(self.flags, config_file=self.config_file)
        return self._settings


def invocation(ctx: click.Context | None = None) -> Invocation:
    ctx = ctx or click.get_current_context()
    root = ctx.find_root()
    if not isinstance(root.obj, Invocation):
        root.obj = Invocation()
    return root.obj


def _store_flag(name: str) -> Callable[[click.Context, click.Parameter, Any], None]:
    def store(ctx: click.Context, param: click.Parameter, value: Any) -> None:
        if value is not None:
            invocation(ctx).flags[name] = value
    return store


def setting(name: str, *decls: str, **kwargs: Any) -> Callable[[F], F]:
    """A flag for the config option ``name`` (``--root-url`` for ``root_url``), not passed to the
    function: unset flags leave the option to the environment, the file or the default."""
    option = OPTIONS_BY_NAME[name]
    kwargs.setdefault("help", f"{option.help} [env {option.env}]")
    return click.option(option.flag, *decls, name, default=None, expose_value=False,
                        callback=_store_flag(name), **kwargs)


def _count_verbose(ctx: click.Context, param: click.Parameter, value: int) -> None:
    state = invocation(ctx)
    state.verbose += value or 0
    if state.verbose:
        logging.getLogger().setLevel(logging.DEBUG)


def verbose_option(f: F) -> F:
    return click.option("-v", "--verbose", count=True, expose_value=False, callback=_count_verbose,
                        help="more detail: debug logs, tracebacks on errors (repeatable)")(f)


def _store_format(ctx: click.Context, param: click.Parameter, value: Any) -> None:
    if param.name == "json_flag" and value:
        invocation(ctx).format = Format.JSON.value
    elif param.name == "output" and value:
        invocation(ctx).format = str(value)


def output_option(f: F) -> F:
    """``-o table|json|yaml`` and ``--json`` (same as ``-o json``)."""
    f = click.option("--json", "json_flag", is_flag=True, expose_value=False, callback=_store_format,
                     help="same as -o json")(f)
    return click.option("-o", "--output", type=click.Choice(FORMATS), default=None, expose_value=False,
                        callback=_store_format, help="table (default), json or yaml; only the result goes "
                                                     "to stdout")(f)


def root_options(f: F) -> F:
    """The options of a command that talks to the root."""
    return verbose_option(setting("root_url", metavar="URL")(f))


def settings() -> Settings:
    return invocation().settings()


def output() -> Output:
    state = invocation()
    return Output(state.format, state.verbose)


def root_url() -> str:
    """The root's URL: the setting when a flag, the environment or a file gives it; else the
    running stack's on this data dir (``treeline up --root-port ...`` recorded it), else the default."""
    current = settings()
    if str(current.sources.get("root_url", "default")).startswith("default"):
        from treeline_cli.stack_config import running_stack_urls

        urls = running_stack_urls(current.data_dir)
        if urls and urls.get("root_url"):
            return urls["root_url"]
    return current.root_url


def root_client(timeout: float = 10.0) -> RootClient:
    return RootClient(root_url(), timeout=timeout)
