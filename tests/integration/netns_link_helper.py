"""Both ends of a measured link, run as processes inside network namespaces by test_links_netns.py.

``python netns_link_helper.py serve HOST`` starts the node engine's real data plane
(:class:`~node_engine.data_plane.server.DataPlaneServer`, native: no emulated uplink) bound to
``HOST`` on a free port, prints its endpoint (one line, ``tcp://HOST:PORT``) on stdout and
serves until its stdin closes (the test holds the pipe; closing it, or the test dying, ends
the server).

``python netns_link_helper.py probe ENDPOINT [--timeout S]`` is a native node's link
monitor (:class:`~node_engine.links.LinkMonitor`, the object the node engine daemon runs)
holding one relay stage routed to ``ENDPOINT``, exactly what a ``relay=True`` deploy command
leaves behind; it waits (deadline ``--timeout`` s) for the monitor's deploy-time probe and
prints that :class:`~treeline_common.messages.LinkReading` as one JSON object
(``rtt_ms``, ``mbps``, ``samples``, ``peer``, ``source``). Exit status 1 with a message on
stderr when no reading arrives in time.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import threading
from collections.abc import Sequence

from node_engine.data_plane.server import DataPlaneServer
from node_engine.links import LinkMonitor
from node_engine.stages import StageRunner, StageTable, relay_stage
from treeline_common.clock import SystemClock
from treeline_common.messages import DeployCommand, LinkReading, NextStage

PEER = "node-b"
POLL_S = 0.05  # how often the probe side looks for the monitor's first reading


def serve(host: str) -> int:
    """Serve probes on ``host`` until stdin reaches EOF."""
    server = DataPlaneServer(StageTable(), StageRunner(), host=host, name="netns-b")
    try:
        print(server.start(), flush=True)
        sys.stdin.read()  # blocks until the test closes the pipe
    finally:
        server.close()
    return 0


def probe(endpoint: str, timeout: float) -> int:
    """Probe ``endpoint`` as a node's link monitor does at deploy time; print the reading."""
    clock = SystemClock()
    stop = threading.Event()
    stages = StageTable()
    stages.put(relay_stage(DeployCommand(
        deployment_id="netns", stage=0, artifact_url="", sha256="", inputs=["x"], outputs=["x"],
        next=NextStage(PEER, endpoint, "netns/1/1"), generation=1, relay=True)))
    monitor = LinkMonitor(stages, lambda: (), clock, stop, probe_timeout=timeout)
    monitor.start()
    reading: LinkReading | None = None
    try:
        deadline = clock.monotonic() + timeout
        while reading is None and clock.monotonic() < deadline:
            reading = next((r for r in monitor.readings() if r.peer == PEER and r.source == "probe"), None)
            if reading is None:
                stop.wait(POLL_S)
    finally:
        stop.set()
        monitor.close()
    if reading is None:
        print(f"no probe reading for {endpoint} within {timeout:.1f}s", file=sys.stderr)
        return 1
    print(json.dumps(dataclasses.asdict(reading)), flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve").add_argument("host")
    probe_parser = sub.add_parser("probe")
    probe_parser.add_argument("endpoint")
    probe_parser.add_argument("--timeout", type=float, default=10.0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    if args.command == "serve":
        return serve(args.host)
    return probe(args.endpoint, args.timeout)


if __name__ == "__main__":
    raise SystemExit(main())
