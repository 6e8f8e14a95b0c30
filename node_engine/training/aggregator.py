"""A cluster aggregator of a hierarchical job: ``python -m node_engine.training.aggregator JOBFILE``.

Hierarchical federated learning as Oakestra's FLOps does it (:mod:`treeline_common.training_hierarchy`):
this process is a Flower *client* of the root aggregator (``upstream_address``) and, whenever the
root asks it to fit, a Flower *server* for its own cluster's local clients (``address``). One
:meth:`ClusterAggregator.fit` runs ``cluster_rounds`` rounds of Flower's FedAvg
(``flwr.server.start_server`` on the local address, ``initial_parameters`` = the global parameters
the root sent) and answers the root with the aggregated parameters and the total number of local
examples of the last local round (so the root's FedAvg weights each cluster by its data, as a
flat FedAvg over all clients would). Only parameters travel, in both directions.

Why a fresh local server per global round: Flower's ``start_server`` runs a fixed number of
rounds and then ends its clients' sessions; the local clients therefore reconnect for every
global round (:mod:`.client` loops in hierarchical mode) and the first local round waits (up to
:data:`~.server.JOIN_GRACE_S`) for every client the cluster started, as the flat server does.

Progress: one ``round`` line per local round (round number ``(global - 1) · K + r``, the local
training loss, clients aggregated); ``done`` when the root ends the job. No evaluation here: the
root aggregator evaluates the global model on its node's held-out split.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import flwr.client
import flwr.server
import numpy as np
from flwr.common import ndarrays_to_parameters
from flwr.server.strategy import FedAvg

from node_engine.training.job import JobFile, emit
from node_engine.training.server import StartedClientsManager
from treeline_common.training import RoundProgress

log = logging.getLogger(__name__)

FORWARDED = ("local_epochs", "batch_size", "learning_rate", "proximal_mu")  # root fit config -> local
UPSTREAM_WAIT_S = 120.0


@dataclass(frozen=True)
class LocalRun:
    """One global round's local work: ``rounds`` FedAvg rounds on ``address`` from ``parameters``.

    ``expected``: local clients the cluster started; ``min_clients``: the SLA's minimum per round;
    ``fit_config``: what each local client's fit gets (its ``round`` is added); ``round_offset``:
    local rounds done before this global round (the job-wide local round numbering).
    """

    address: str
    parameters: list[np.ndarray]
    rounds: int
    expected: int
    min_clients: int
    fit_config: dict[str, Any]
    round_offset: int = 0


LocalOutcome = tuple[list[np.ndarray], int, float]  # (aggregated parameters, local examples, train loss)
LocalRunner = Callable[[LocalRun], LocalOutcome]


class _LocalRounds:
    """Flower callbacks of one local run: keeps the aggregate, counts examples, emits a line per round."""

    def __init__(self, offset: int) -> None:
        self.offset = offset
        self.latest: list[np.ndarray] = []
        self.examples = 0
        self.loss = 0.0
        self.clients = 0
        self.started = time.monotonic()

    def fit_metrics(self, results: list[tuple[int, dict[str, Any]]]) -> dict[str, Any]:
        self.clients = len(results)
        self.examples = sum(n for n, _ in results)
        total = self.examples or 1
        self.loss = sum(n * float(m.get("train_loss", 0.0)) for n, m in results) / total
        return {"train_loss": self.loss}

    def evaluate_fn(self, server_round: int, arrays: list[np.ndarray],
                    config: dict[str, Any]) -> tuple[float, dict[str, Any]] | None:
        self.latest = [np.asarray(a) for a in arrays]
        if server_round:
            now = time.monotonic()
            emit(RoundProgress("round", self.offset + server_round, self.loss, None, self.clients,
                               seconds=now - self.started))
            self.started = now
        return None


def run_local_rounds(run: LocalRun) -> LocalOutcome:
    """Flower's FedAvg over the cluster's local clients (see the module docstring); RuntimeError
    when no local round completed (the root then counts this cluster as failed for the round)."""
    rounds = _LocalRounds(run.round_offset)
    strategy = FedAvg(fraction_fit=1.0, fraction_evaluate=0.0, min_fit_clients=run.min_clients,
                      min_evaluate_clients=0, min_available_clients=run.min_clients,
                      evaluate_fn=rounds.evaluate_fn,
                      on_fit_config_fn=lambda rnd: {**run.fit_config, "round": run.round_offset + rnd},
                      initial_parameters=ndarrays_to_parameters(run.parameters),
                      fit_metrics_aggregation_fn=rounds.fit_metrics)
    config = flwr.server.ServerConfig(num_rounds=run.rounds)
    flwr.server.start_server(server_address=run.address, config=config, strategy=strategy,
                             client_manager=StartedClientsManager(run.expected))
    if not rounds.examples or not rounds.latest:
        raise RuntimeError(f"no local round completed on {run.address}")
    return rounds.latest, rounds.examples, rounds.loss


class ClusterAggregator(flwr.client.NumPyClient):
    """The root aggregator's client for one cluster; ``local`` runs the local rounds (injected for tests)."""

    def __init__(self, job: JobFile, local: LocalRunner = run_local_rounds) -> None:
        if job.spec.hierarchical is None:
            raise ValueError("spec.hierarchical: an aggregator runs hierarchical jobs only")
        self.job = job
        self.cluster_rounds = job.spec.hierarchical.cluster_rounds
        self._local = local
        self.latest: list[np.ndarray] = []

    def get_parameters(self, config: dict[str, Any]) -> list[np.ndarray]:
        """The last aggregate (the root normally sends its own starting parameters first)."""
        return self.latest

    def fit(self, parameters: list[np.ndarray], config: dict[str, Any]) -> tuple[list[np.ndarray], int, dict]:
        """K local FedAvg rounds from the global ``parameters``; (aggregate, local examples, metrics)."""
        global_round = max(int(config.get("round", 1)), 1)
        forwarded = {k: config[k] for k in FORWARDED if k in config}
        run = LocalRun(self.job.address, [np.asarray(p) for p in parameters], self.cluster_rounds,
                       self.job.clients, self.job.spec.min_clients, forwarded,
                       (global_round - 1) * self.cluster_rounds)
        arrays, examples, loss = self._local(run)
        self.latest = arrays
        return arrays, examples, {"train_loss": loss}


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    try:
        job = JobFile.read(Path(args[0]))
        aggregator = ClusterAggregator(job)
    except (IndexError, OSError, ValueError) as exc:
        emit(RoundProgress("failed", reason=f"job file: {exc}"))
        return 1
    flwr.client.start_client(server_address=job.upstream_address, client=aggregator.to_client(),
                             insecure=True, max_wait_time=UPSTREAM_WAIT_S)
    emit(RoundProgress("done"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
