"""``logs COMPONENT [-f]``, ``version`` and ``config show``."""

from __future__ import annotations

import platform
import sys
import time
from importlib import metadata
from pathlib import Path

import click

from treeline_cli.commands.common import invocation, output, output_option, setting, settings, verbose_option
from treeline_cli.errors import Failure, TreelineGroup
from treeline_cli.output import Column
from treeline_common.config import OPTIONS, config_candidates

FOLLOW_POLL_S = 0.25


def treeline_version() -> str:
    try:
        return metadata.version("treeline")
    except metadata.PackageNotFoundError:
        return "unknown (not installed)"


def log_files(data_dir: Path) -> dict[str, Path]:
    """component name -> log file, from what ``treeline up`` wrote under ``data_dir``.

    Processes log to ``logs/<name>.log`` (node engines as ``node-<node name>``, listed here by
    the node's name); each broker the stack started logs in ``broker/<kind>.log`` (cluster i's,
    i > 1, in ``broker-<i>/<kind>.log``, listed as ``broker-<i>``).
    """
    found: dict[str, Path] = {}
    for path in sorted((data_dir / "logs").glob("*.log")):
        found[path.stem.removeprefix("node-")] = path
    brokers = [data_dir / "broker", *sorted(data_dir.glob("broker-*"))]
    for folder in brokers:
        if folder.name not in found:
            for path in sorted(folder.glob("*.log")):
                found[folder.name] = path
    return found


@click.command()
@click.argument("component")
@click.option("-f", "--follow", is_flag=True, help="keep printing what is appended (Ctrl-C stops)")
@click.option("--tail", "tail_lines", type=click.IntRange(min=0), default=None, metavar="N",
              help="only the last N lines")
@setting("data_dir", metavar="DIR")
@verbose_option
def logs(component: str, follow: bool, tail_lines: int | None) -> None:
    """Print the log of a process `treeline up` started: root, cluster, broker or a node's name."""
    data_dir = settings().data_dir
    files = log_files(data_dir)
    if not files:
        raise Failure(f"no logs under {data_dir}",
                      "`treeline up` writes them there; pass --data-dir if it ran elsewhere")
    from treeline_cli.stack_clusters import FIRST_CLUSTER_ALIASES

    component = FIRST_CLUSTER_ALIASES.get(component, component)  # cluster 1's processes: cluster, broker
    path = files.get(component) or files.get(component.removeprefix("node-"))
    if path is None:
        raise Failure(f"no log of {component!r} under {data_dir}", f"there are: {', '.join(sorted(files))}")
    with path.open("r", errors="replace") as handle:
        lines = handle.readlines()
        sys.stdout.writelines(lines[-tail_lines:] if tail_lines is not None and tail_lines < len(lines)
                              else lines if tail_lines != 0 else [])
        sys.stdout.flush()
        while follow:
            chunk = handle.read()
            if chunk:
                sys.stdout.write(chunk)
                sys.stdout.flush()
            else:
                time.sleep(FOLLOW_POLL_S)


@click.command()
@output_option
@verbose_option
def version() -> None:
    """Print the version of treeline."""
    out = output()
    doc = {"treeline": treeline_version(), "python": platform.python_version()}
    out.result(doc, lambda: out.line(f"treeline {doc['treeline']} (python {doc['python']})"))


@click.group(cls=TreelineGroup)
def config() -> None:
    """The settings every command uses (flag > TREELINE_* environment > treeline.toml > default)."""


def _all_settings(f: click.decorators.FC) -> click.decorators.FC:
    for option in reversed(OPTIONS):
        f = setting(option.name)(f)
    return f


@config.command()
@_all_settings
@output_option
@verbose_option
def show() -> None:
    """Every setting, its value and where it came from."""
    out = output()
    resolved = settings()
    looked = [str(invocation().config_file)] if invocation().config_file else \
        [str(p) for p in config_candidates(Path.cwd(), Path.home())]
    doc = {"config_file": str(resolved.config_file) if resolved.config_file else None,
           "searched": looked, "settings": resolved.as_dict()}

    def render() -> None:
        rows = [{"name": name, "value": ",".join(value) if isinstance(value, tuple) else value,
                 "source": source} for name, value, source in resolved.rows()]
        out.table(rows, (Column("NAME", lambda r: r["name"]), Column("VALUE", lambda r: r["value"]),
                         Column("SOURCE", lambda r: r["source"])))
        out.line()
        out.line(f"config file: {doc['config_file'] or 'none found'} (searched {', '.join(looked)})")
        out.line("precedence: flag > environment (TREELINE_<NAME>) > file > default")
    out.result(doc, render)
