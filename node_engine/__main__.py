"""``python -m node_engine``: run the node engine daemon (see :mod:`node_engine.daemon`).

Logging is set up here, before the daemon starts, with the plain format every Treeline process
shares (:mod:`treeline_common.logs`), each line tagged with the node's name; the daemon's own
``logging.basicConfig`` then leaves it as it is.
"""

from __future__ import annotations

import sys

from node_engine.config import parse_args
from node_engine.daemon import main
from treeline_common.logs import setup_logging

if __name__ == "__main__":
    config = parse_args()  # exits with status 2 on a bad command line, before anything starts
    setup_logging(config.log_level, tag=config.name)
    sys.exit(main())
