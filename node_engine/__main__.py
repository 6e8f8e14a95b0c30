"""``python -m node_engine``, ``treeline-node`` and ``treeline node``: run the node engine daemon
(see :mod:`node_engine.daemon`).

Logging is set up here, before the daemon starts, with the plain format every Treeline process
shares (:mod:`treeline_common.logs`), each line tagged with the node's name; the daemon's own
``logging.basicConfig`` then leaves it as it is. Only the node's own dependencies are imported
(tests/unit/test_node_footprint.py checks it), so this runs on a device with ``treeline[node]``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from node_engine.config import parse_args
from node_engine.daemon import main
from treeline_common.logs import setup_logging


def run(argv: Sequence[str] | None = None, prog: str = "treeline-node") -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``), set up logging and run the daemon until a signal.

    Returns the exit code; a bad command line exits with status 2 before anything starts.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    config = parse_args(args, prog=prog)
    setup_logging(config.log_level, tag=config.name)
    return main(args)


if __name__ == "__main__":
    sys.exit(run(prog="python -m node_engine"))
