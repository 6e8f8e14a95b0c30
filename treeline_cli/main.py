"""The ``treeline`` console script.

Commands: ``up``, ``demo``, ``apply``, ``deploy``, ``delete``, ``get``, ``describe``, ``infer``,
``logs``, ``model register|profile``, ``training watch``, ``config show``, ``version``, ``login``,
``logout``, ``admin create``. ``--token`` (or ``$TREELINE_TOKEN``) sends that bearer token to the
root. Settings come from
:mod:`treeline_common.config` (flag > ``TREELINE_*`` environment > ``treeline.toml`` > default);
what goes to stdout and stderr is fixed by :mod:`treeline_cli.output`; every error ends as one
line on stderr with exit code 2 (usage) or 1 (failure), see :mod:`treeline_cli.errors`.
"""

from __future__ import annotations

import logging
import sys
import traceback
from pathlib import Path

import click

from treeline_cli import root_client
from treeline_cli.commands.apply import apply, delete, deploy
from treeline_cli.commands.auth import admin, login, logout
from treeline_cli.commands.common import Invocation, invocation, setting, verbose_option
from treeline_cli.commands.data import data
from treeline_cli.commands.export import export_images
from treeline_cli.commands.get import describe, get
from treeline_cli.commands.infer import infer
from treeline_cli.commands.misc import config, logs, treeline_version, version
from treeline_cli.commands.model import model
from treeline_cli.commands.node import node
from treeline_cli.commands.optimize import optimize
from treeline_cli.commands.stack import demo, up
from treeline_cli.commands.training import training
from treeline_cli.errors import INTERRUPTED, TreelineGroup, classify
from treeline_common.config import OPTIONS


def _store_config_file(ctx: click.Context, param: click.Parameter, value: Path | None) -> None:
    if value is not None:
        invocation(ctx).config_file = value


def _store_token(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    if value:
        root_client.token_override = value


def _print_version(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if value and not ctx.resilient_parsing:
        click.echo(f"treeline {treeline_version()}")
        ctx.exit(0)


def _global_settings(f: click.decorators.FC) -> click.decorators.FC:
    for option in reversed(OPTIONS):
        f = setting(option.name)(f)
    return f


@click.group(cls=TreelineGroup,
             context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--version", is_flag=True, expose_value=False, is_eager=True, callback=_print_version,
              help="print the version and exit")
@click.option("--config", "config_file", type=click.Path(path_type=Path), default=None, expose_value=False,
              callback=_store_config_file, metavar="FILE",
              help="read settings from FILE instead of ./treeline.toml or ~/.config/treeline/treeline.toml "
                   "[env TREELINE_CONFIG]")
@click.option("--token", default=None, expose_value=False, callback=_store_token, metavar="TOKEN",
              help="bearer token for the root (default: $TREELINE_TOKEN, else what `treeline login` saved)")
@_global_settings
@verbose_option
def cli() -> None:
    """Treeline: a hierarchical edge-ML orchestrator (root -> clusters -> node engines).

    Every setting is a flag, a TREELINE_<NAME> environment variable and a key in treeline.toml;
    `treeline config show` prints each with its source.
    """


for command in (up, demo, apply, deploy, delete, get, describe, infer, logs, model, config, version,
                login, logout, admin, node, export_images, data, training):
    cli.add_command(command)
model.add_command(optimize)  # `treeline model optimize`: its own module (torch only when it runs)


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns its exit code. Never lets a traceback out unless ``-v`` was given."""
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    state = Invocation()
    root_client.token_override = None  # per invocation (tests run several in one process)
    try:
        result = cli.main(args=argv if argv is not None else sys.argv[1:], prog_name="treeline",
                          standalone_mode=False, obj=state)
        return result if isinstance(result, int) else 0
    except KeyboardInterrupt:
        return INTERRUPTED
    except click.exceptions.Abort:
        return INTERRUPTED
    except click.exceptions.Exit as exc:
        return int(exc.exit_code)
    except Exception as exc:  # noqa: BLE001 - the one place every error becomes one line and a code
        error = classify(exc)
        if state.verbose:
            traceback.print_exc(file=sys.stderr)
        sys.stdout.flush()
        first = error.line().splitlines()[0] if error.line() else type(exc).__name__
        print(f"error: {first}", file=sys.stderr)
        for line in error.extra:
            print(line, file=sys.stderr)
        return error.exit_code
    finally:  # `--token` holds for this invocation only, never for a later client in this process
        root_client.token_override = None


if __name__ == "__main__":
    sys.exit(main())
