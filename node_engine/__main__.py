"""``python -m node_engine``: run the node engine daemon (see :mod:`node_engine.daemon`)."""

from __future__ import annotations

import sys

from node_engine.daemon import main

if __name__ == "__main__":
    sys.exit(main())
