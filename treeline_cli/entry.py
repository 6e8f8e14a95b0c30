"""The ``treeline`` console script's entry: ``treeline node ...`` runs a node engine without the
CLI's own dependencies, everything else goes to :func:`treeline_cli.main.main`.

A device installs only ``treeline[node]`` (no click, rich or Flask), so ``treeline node`` must not
import them: it goes straight to :func:`node_engine.__main__.run`. Any other command needs the
``cli`` extra; without it the command says so in one line (exit 2) instead of a traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

CLI_MISSING_EXIT = 2


def main(argv: Sequence[str] | None = None) -> int:
    """Run one ``treeline`` command line (default ``sys.argv[1:]``); returns its exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["node"]:
        from node_engine.__main__ import run  # the node's import closure only

        return run(args[1:], prog="treeline node")
    try:
        from treeline_cli.main import main as cli_main
    except ImportError as exc:
        print(f"error: `treeline {' '.join(args[:1]) or '--help'}` needs the CLI's dependencies "
              f"({exc.name or exc} is missing): pip install 'treeline[cli]'; "
              f"`treeline node` runs a node engine without them", file=sys.stderr)
        return CLI_MISSING_EXIT
    return cli_main(args)


if __name__ == "__main__":
    sys.exit(main())
