"""``treeline node``: run a node engine on this device (:mod:`node_engine`), listed in ``--help``.

The console script handles ``treeline node`` before click is imported (:mod:`treeline_cli.entry`),
so it also works where only ``treeline[node]`` is installed; this command is the same thing for
callers of :func:`treeline_cli.main.main` and documents itself in the command list. Every option
is the node engine's own (``treeline node --help``): ``--cluster-url``, ``--join-token`` (default
``$TREELINE_JOIN_TOKEN``), ``--profile`` (default ``native``: this device as it is), ...
"""

from __future__ import annotations

import click


@click.command("node", context_settings={"ignore_unknown_options": True, "allow_extra_args": True,
                                         "help_option_names": []})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def node(args: tuple[str, ...]) -> int:
    """Run a node engine on this device (options: treeline node --help)."""
    # imported here: onnxruntime and the data plane would slow every other command's start-up
    from node_engine.__main__ import run

    return run(list(args), prog="treeline node")
