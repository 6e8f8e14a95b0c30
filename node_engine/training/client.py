"""The Flower client of one training job: ``python -m node_engine.training.client JOBFILE``.

A ``flwr.client.NumPyClient`` on the node's own shard (``data_path``; it never leaves the node):
each round Flower hands it the global parameters and the fit config, it trains ``local_epochs``
of SGD (with the FedProx term when the server's strategy sends ``proximal_mu``; only the head
with ``trainable: head``), clips its update with Flower's ``compute_clip_model_update`` when
the server's client-side DP wrapper sends ``clipping_norm``, and returns the new parameters.
Per round it prints a :class:`~treeline_common.training.RoundProgress` line with its local loss
and ``bytes_sent``: the bytes of the serialized parameters it returns (what crosses the
network besides gRPC framing). ``flwr.client.start_client`` connects, retrying until the
server is up, and returns when the server ends the job. In a hierarchical job (its server is a
cluster aggregator, :mod:`.aggregator`, whose Flower server lives for one global round) the
client connects again after each session, until the engine stops it or no aggregator answers
for :data:`RECONNECT_WAIT_S`.
"""

from __future__ import annotations

import logging
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import flwr.client
import numpy as np
from flwr.common import ndarrays_to_parameters
from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM, compute_clip_model_update

from model_zoo.federated import Shard, load_shard
from node_engine.training import model as mlp
from node_engine.training.job import JobFile, emit
from treeline_common.netutil import poll_until
from treeline_common.training import RoundProgress, TrainingSpec

log = logging.getLogger(__name__)
RECONNECT_WAIT_S = 120.0  # hierarchical mode: how long a client waits for its aggregator's next session


def parameter_bytes(arrays: list[np.ndarray]) -> int:
    """Bytes of ``arrays`` as Flower serializes them (``ndarrays_to_parameters``: .npy per array)."""
    return sum(len(t) for t in ndarrays_to_parameters(arrays).tensors)


class ShardClient(flwr.client.NumPyClient):
    """Trains the job's model on one local shard; see the module docstring."""

    def __init__(self, spec: TrainingSpec, shard: Shard, seed: int) -> None:
        self.spec = spec
        self.shard = shard
        self.seed = seed
        self.net = mlp.new_model(seed)
        if spec.trainable == "head":
            mlp.freeze_body(self.net)

    def get_parameters(self, config: dict[str, Any]) -> list[np.ndarray]:
        return mlp.get_parameters(self.net)

    def fit(self, parameters: list[np.ndarray], config: dict[str, Any]) -> tuple[list[np.ndarray], int, dict]:
        started = time.monotonic()
        mlp.set_parameters(self.net, parameters)
        rnd = int(config.get("round", 0))
        loss = mlp.train(self.net, self.shard.x, self.shard.y, epochs=int(config.get("local_epochs", 1)),
                         batch_size=int(config.get("batch_size", 32)),
                         lr=float(config.get("learning_rate", 0.1)),
                         proximal_mu=float(config.get("proximal_mu", 0.0)), seed=self.seed + rnd)
        updated = mlp.get_parameters(self.net)
        if KEY_CLIPPING_NORM in config:  # Flower's client-side fixed clipping (its fixedclipping_mod's maths)
            received = [np.asarray(p) for p in parameters]
            compute_clip_model_update(updated, received, float(config[KEY_CLIPPING_NORM]))
        emit(RoundProgress("round", rnd, loss, None, 1, bytes_sent=parameter_bytes(updated),
                           seconds=time.monotonic() - started))
        return updated, len(self.shard.y), {"train_loss": loss}

    def evaluate(self, parameters: list[np.ndarray], config: dict[str, Any]) -> tuple[float, int, dict]:
        mlp.set_parameters(self.net, parameters)
        loss, accuracy = mlp.evaluate(self.net, self.shard.x, self.shard.y)
        return loss, len(self.shard.y), {"accuracy": accuracy}


def _listening(address: str) -> str:
    host, _, port = address.rpartition(":")
    with socket.create_connection((host, int(port)), timeout=0.5):
        return "listening"


def serve_sessions(address: str, session: Callable[[], object], wait_s: float = RECONNECT_WAIT_S) -> int:
    """Hierarchical mode: run ``session`` (one Flower client session) each time the aggregator's
    local server at ``address`` accepts connections (polled, at most ``wait_s`` each time);
    returns the sessions run when none comes within ``wait_s`` (the job is over, or the engine
    kills this process first). A session that fails (the server went away under it) counts too."""
    sessions = 0
    while True:
        try:
            poll_until(lambda: _listening(address), wait_s, interval=0.2, what=f"the aggregator at {address}")
        except TimeoutError:
            return sessions
        try:
            session()
        except Exception as exc:  # noqa: BLE001 - the local server ended under us: wait for the next one
            log.info("session with %s ended: %s", address, exc)
        sessions += 1


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    try:
        job = JobFile.read(Path(args[0]))
        shard = load_shard(Path(job.data_path))
    except (IndexError, OSError, ValueError) as exc:
        emit(RoundProgress("failed", reason=str(exc)))
        return 1
    client = ShardClient(job.spec, shard, job.seed).to_client()
    if job.spec.hierarchical is not None:
        serve_sessions(job.address, lambda: flwr.client.start_client(
            server_address=job.address, client=client, insecure=True, max_wait_time=10.0))
    else:
        flwr.client.start_client(server_address=job.address, client=client, insecure=True, max_wait_time=60.0)
    emit(RoundProgress("done"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
