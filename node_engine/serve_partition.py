"""``python -m node_engine.serve_partition``: serve one partition as a plain process, no control plane.

The entry point of the container images ``treeline export-images`` writes (one image per
partition, see :mod:`treeline_cli.export_images`): the partition is loaded in onnxruntime and
served by the node engine's data plane (:class:`~node_engine.data_plane.server.DataPlaneServer`,
the same framing, forwarding and back-pressure a node engine has), forwarding its outputs to the
next stage's ``--next-endpoint`` when there is one. Options also come from the environment
(``TREELINE_STAGE_KEY``, ``TREELINE_NEXT_ENDPOINT``, ...), which is how a compose file wires
stages together. Stops cleanly on SIGTERM/SIGINT.

Errors: a missing model file or an option out of range is one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

from node_engine.data_plane.server import DataPlaneServer
from node_engine.runtime import load_partition
from node_engine.stages import LoadedStage, StageRunner, StageTable
from treeline_common.messages import NextStage

log = logging.getLogger(__name__)


def _env(name: str, default: str = "") -> str:
    return os.environ.get(f"TREELINE_{name}", default)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m node_engine.serve_partition",
                                     description="Serve one partition with the node engine's data plane.")
    add = parser.add_argument
    add("--model", default=_env("MODEL", "partition.onnx"), help="the partition's ONNX file")
    add("--stage-key", default=_env("STAGE_KEY"), required=not _env("STAGE_KEY"),
        help="the key requests address this stage by [env TREELINE_STAGE_KEY]")
    add("--outputs", default=_env("OUTPUTS"),
        help="comma-separated tensors this stage sends on (default: the partition's outputs)")
    add("--next-endpoint", default=_env("NEXT_ENDPOINT"), help="tcp://host:port of the next stage")
    add("--next-stage-key", default=_env("NEXT_STAGE_KEY"), help="the next stage's key")
    add("--host", default=_env("HOST", "0.0.0.0"), help="address to bind")
    add("--port", type=int, default=int(_env("PORT", "5555")), help="port to bind (0: a free one)")
    add("--threads", type=int, default=int(_env("THREADS", "0")), help="onnxruntime intra-op threads")
    args = parser.parse_args(argv)
    if not 0 <= args.port <= 65535:
        parser.error(f"--port must be in 0..65535, not {args.port}")
    if bool(args.next_endpoint) != bool(args.next_stage_key):
        parser.error("--next-endpoint and --next-stage-key go together")
    if not Path(args.model).is_file():
        parser.error(f"--model: no such file: {args.model}")
    return args


def build_server(args: argparse.Namespace) -> DataPlaneServer:
    """The data plane serving the partition as ``args`` describe it (not started)."""
    path = Path(args.model)
    following = NextStage(node_id="next", endpoint=args.next_endpoint, stage_key=args.next_stage_key) \
        if args.next_endpoint else None
    table = StageTable()
    deployment_id = args.stage_key.split("/")[0]
    table.put(LoadedStage(key=args.stage_key, deployment_id=deployment_id, index=0, sha256="", generation=0,
                          session=load_partition(path, args.threads), next=following, path=path,
                          outputs=tuple(o for o in args.outputs.split(",") if o)))
    return DataPlaneServer(table, StageRunner(), host=args.host, port=args.port, name=args.stage_key)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    server = build_server(args)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    endpoint = server.start()
    print(f"serving {args.stage_key} on {endpoint}", flush=True)
    stop.wait()
    server.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
