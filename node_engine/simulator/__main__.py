"""``python -m node_engine.simulator``: run a fleet of virtual nodes until SIGTERM/SIGINT.

SIGTERM/SIGINT leaves cleanly (retained ``offline`` per node, clean DISCONNECTs); SIGKILL of
the process is the crash of the whole fleet (in per-node mode the broker publishes every will).
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Sequence

from node_engine.simulator.config import parse_args
from node_engine.simulator.fleet import Fleet
from treeline_common.errors import TreelineError, Unauthorized
from treeline_common.shutdown import ShutdownSignal


def main(argv: Sequence[str] | None = None) -> int:
    config, level = parse_args(argv)
    logging.basicConfig(level=getattr(logging, level, logging.INFO), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s [simulator] %(name)s: %(message)s")
    shutdown = ShutdownSignal()
    fleet = Fleet(config)
    failure: list[BaseException] = []
    started = threading.Event()

    def start() -> None:  # on a thread: a signal during registration still stops the simulator
        try:
            fleet.start()
        except (TreelineError, TimeoutError, RuntimeError, OSError) as exc:
            failure.append(exc)
        finally:
            started.set()

    threading.Thread(target=start, name="fleet-start", daemon=True).start()
    while not started.wait(0.2):
        if shutdown.received is not None:  # SIGTERM/SIGINT while registering
            print("simulator: stopped while starting", file=sys.stderr)
            fleet.kill()
            return 1
    if failure:
        hint = " (give the cluster's join token: --join-token or TREELINE_JOIN_TOKEN)" if isinstance(
            failure[0], Unauthorized) else ""
        print(f"simulator: {failure[0]}{hint}", file=sys.stderr)
        fleet.kill()
        return 1
    print(f"simulator: {len(fleet.nodes)} virtual nodes online ({config.mode}); Ctrl-C to stop",
          file=sys.stderr)
    shutdown.wait()
    fleet.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
