"""What a node engine hands a Flower process it starts: one JSON file, typed once here.

Both sides (the engine in :mod:`node_engine.training.handler`, the process in ``server.py`` /
``client.py``) read and write it through :class:`JobFile`; a process reports back through
:class:`~treeline_common.training.RoundProgress` JSON lines on stdout (:func:`emit`).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

from treeline_common import wire
from treeline_common.training import RoundProgress, TrainingSpec

# Beside a server's job file: the clients its first round waits for, written by the node engine on
# the cluster's ``expect`` command (a client refused for good) and re-read by the server.
EXPECTED_FILE = "expected"


@dataclass(frozen=True)
class JobFile:
    """``address``: the server's ``host:port``; ``model_path``: the starting ONNX (server);
    ``data_path``: the client's local shard, or the server's held-out split (may not exist);
    ``out_path``: where the server writes the trained ONNX; ``clients``: clients started.
    Server resume: ``start_round`` rounds are done and ``resume_path`` holds the parameters after
    them (a :mod:`.checkpoint`); ``checkpoint_dir``: where the server writes one per round."""

    spec: TrainingSpec
    address: str
    data_path: str
    model_path: str = ""
    out_path: str = ""
    clients: int = 0
    seed: int = 0
    start_round: int = 0
    resume_path: str = ""
    checkpoint_dir: str = ""
    upstream_address: str = ""  # an aggregator (hierarchical job): the root aggregator's host:port

    def write(self, path: Path) -> Path:
        path.write_text(json.dumps(wire.to_dict(self)))
        return path

    @classmethod
    def read(cls, path: Path) -> JobFile:
        """ValueError (wire.WireError) naming the field when the file does not fit."""
        return wire.from_dict(cls, wire.loads(path.read_bytes(), cls.__name__))


def emit(progress: RoundProgress) -> None:
    """One progress line on stdout (flushed: the engine reads it as it comes)."""
    sys.stdout.write(json.dumps(wire.to_dict(progress), allow_nan=False) + "\n")
    sys.stdout.flush()


def parse_progress(line: str) -> RoundProgress | None:
    """A progress line, or None for anything else a process prints (Flower's own logs)."""
    if not line.startswith("{"):
        return None
    try:
        return wire.from_dict(RoundProgress, wire.loads(line, "RoundProgress"))
    except (wire.WireError, RecursionError):
        return None
