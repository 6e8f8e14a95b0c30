"""``python -m node_engine.simulator``: run a fleet of virtual nodes until SIGTERM/SIGINT.

SIGTERM/SIGINT leaves cleanly (retained ``offline`` per node, clean DISCONNECTs); SIGKILL of
the process is the crash of the whole fleet (in per-node mode the broker publishes every will).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

from node_engine.simulator.config import parse_args
from node_engine.simulator.fleet import Fleet
from treeline_common.shutdown import ShutdownSignal


def main(argv: Sequence[str] | None = None) -> int:
    config, level = parse_args(argv)
    logging.basicConfig(level=getattr(logging, level, logging.INFO), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s [simulator] %(name)s: %(message)s")
    shutdown = ShutdownSignal()
    fleet = Fleet(config)
    try:
        fleet.start()
    except (TimeoutError, RuntimeError, OSError) as exc:
        print(f"simulator: {exc}", file=sys.stderr)
        return 1
    print(f"simulator: {len(fleet.nodes)} virtual nodes online ({config.mode}); Ctrl-C to stop",
          file=sys.stderr)
    shutdown.wait()
    fleet.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
