"""The Flower server of one training job: ``python -m node_engine.training.server JOBFILE``.

Flower does the federated work: its strategy (``FedAvg``, ``FedProx``, ``FedAdam``; wrapped in
``DifferentialPrivacyClientSideFixedClipping`` / ``…ServerSideFixedClipping`` when the SLA asks
for privacy) samples the clients, aggregates their parameters and calls our evaluation after
every round; ``flwr.server.start_server`` runs the rounds over gRPC. Only parameters travel.

This module adds: the starting parameters (read from the registry version's ONNX), the
evaluation on the held-out split the aggregator node holds (``test.npz``; none: loss/accuracy
null), one :class:`~treeline_common.training.RoundProgress` line per round on stdout (with the
privacy spent so far, :func:`~treeline_common.training.gaussian_epsilon`, δ = 1e-5), and the
ONNX export of the final parameters (``out_path``) announced by a ``done`` line.
Exit code 0 after ``done``; 1 after a ``failed`` line.

Faults: the starting model (or checkpoint) is read and checked against the model before the
server listens, so a model it cannot train fails with its reason (a ``failed`` line) rather than
a silent exit. After every completed round the aggregated parameters are written as a
checkpoint (``checkpoint-<round>.npz`` in ``checkpoint_dir``; the one two rounds back is
deleted) and named in the round's line. A resumed server (``start_round`` > 0, ``resume_path``)
starts from that checkpoint, runs the remaining rounds and numbers them on from
``start_round + 1``; it does not report round 0 again. What a resume cannot restore: a stateful
strategy's server-side optimizer state (FedAdam's moments start again from zero).
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import flwr.server
import numpy as np
from flwr.common import ndarrays_to_parameters
from flwr.server.client_manager import SimpleClientManager
from flwr.server.strategy import (
    DifferentialPrivacyClientSideFixedClipping,
    DifferentialPrivacyServerSideFixedClipping,
    FedAdam,
    FedAvg,
    FedProx,
    Strategy,
)

from model_zoo.federated import load_shard
from node_engine.training import checkpoint
from node_engine.training import model as mlp
from node_engine.training.job import EXPECTED_FILE, JobFile, emit
from treeline_common.training import RoundProgress, TrainingSpec, gaussian_epsilon

log = logging.getLogger(__name__)

STRATEGIES: dict[str, type[FedAvg]] = {"fedavg": FedAvg, "fedprox": FedProx, "fedadam": FedAdam}
JOIN_GRACE_S = 30  # how long the first round waits for every started client (then: those connected)
EXPECT_POLL_S = 0.25  # how often that wait re-reads the expected count (the cluster's `expect` command)


class StartedClientsManager(SimpleClientManager):
    """Flower's client manager, except that the first round waits (up to ``grace_s``) for all the
    ``expected`` clients the cluster started (fewer once the cluster says a client refused:
    ``expected_file``), so round 1 does not begin with the first ``min_clients`` to connect.
    Later rounds take whoever is connected (at least ``min_clients``: the strategy's own wait),
    so a client that died does not stall training."""

    def __init__(self, expected: int, grace_s: float = JOIN_GRACE_S,
                 expected_file: Path | None = None) -> None:
        super().__init__()
        self._expected = expected
        self._grace_s = grace_s
        self._expected_file = expected_file
        self._waited = False

    def expected(self) -> int:
        """The clients round 1 waits for: ``expected``, or fewer once the node engine wrote the
        cluster's ``expect`` command into ``expected_file`` (a client refused for good)."""
        try:
            return min(self._expected, int(self._expected_file.read_text())) if self._expected_file else \
                self._expected
        except (OSError, ValueError):
            return self._expected

    def num_available(self) -> int:
        if not self._waited:
            self._waited = True
            deadline = time.monotonic() + self._grace_s
            while super().num_available() < self.expected() and time.monotonic() < deadline:
                with self._cv:  # woken by a client's registration, or re-reads the expected count
                    self._cv.wait(min(EXPECT_POLL_S, max(deadline - time.monotonic(), 0.0)))
            if super().num_available() < self.expected():
                log.warning("only %s of %s clients joined within %s s", super().num_available(),
                            self.expected(), self._grace_s)
        return super().num_available()


class RoundTracker:
    """Per-round figures: clients from the fit metrics, loss/accuracy from the evaluation.

    ``offset``: rounds an earlier server of the job completed (Flower's round r is the job's
    round ``offset + r``); ``save(round, arrays)`` keeps a checkpoint and returns its path.
    """

    def __init__(self, evaluate: Callable[[list[np.ndarray]], tuple[float | None, float | None]],
                 epsilon: Callable[[int], float | None] = lambda _round: None, *, offset: int = 0,
                 save: Callable[[int, list[np.ndarray]], str] = lambda _round, _arrays: "") -> None:
        self._evaluate = evaluate
        self._epsilon = epsilon
        self.offset = offset
        self._save = save
        self.clients = 0
        self.latest: list[np.ndarray] = []
        self.started = time.monotonic()

    def fit_metrics(self, results: list[tuple[int, dict[str, Any]]]) -> dict[str, Any]:
        """Flower's ``fit_metrics_aggregation_fn``: remembers how many clients were aggregated."""
        self.clients = len(results)
        total = sum(n for n, _ in results) or 1
        return {"train_loss": sum(n * float(m.get("train_loss", 0.0)) for n, m in results) / total}

    def evaluate_fn(self, server_round: int, arrays: list[np.ndarray],
                    config: dict[str, Any]) -> tuple[float, dict[str, Any]] | None:
        """Flower's ``evaluate_fn``: called with the aggregated parameters after every round (0: start)."""
        self.latest = [np.asarray(a) for a in arrays]
        loss, accuracy = self._evaluate(self.latest)
        now = time.monotonic()
        job_round = self.offset + server_round
        if server_round or not self.offset:  # a resumed server's round 0 is the last reported round
            path = self._save(job_round, self.latest) if server_round else ""
            emit(RoundProgress("round", job_round, loss, accuracy, self.clients if server_round else 0,
                               seconds=now - self.started, epsilon=self._epsilon(job_round),
                               checkpoint_path=path))
        self.started = now
        return (loss, {"accuracy": accuracy}) if loss is not None else None


def build_strategy(spec: TrainingSpec, initial: list[np.ndarray], tracker: RoundTracker,
                   clients: int) -> Strategy:
    """The Flower strategy the SLA names, with its parameters, wrapped for differential privacy."""
    extra: dict[str, Any] = spec.strategy_parameters()
    strategy: Strategy = STRATEGIES[spec.strategy](
        fraction_fit=spec.fraction_fit, fraction_evaluate=0.0, min_fit_clients=spec.min_clients,
        min_evaluate_clients=0, min_available_clients=spec.min_clients, evaluate_fn=tracker.evaluate_fn,
        on_fit_config_fn=lambda rnd: {"round": tracker.offset + rnd, "local_epochs": spec.local_epochs,
                                      "batch_size": spec.batch_size, "learning_rate": spec.learning_rate},
        initial_parameters=ndarrays_to_parameters(initial), fit_metrics_aggregation_fn=tracker.fit_metrics,
        **extra)
    if spec.privacy is not None:
        sampled = max(spec.min_clients, round(clients * spec.fraction_fit))
        wrapper = (DifferentialPrivacyClientSideFixedClipping if spec.privacy.side == "client"
                   else DifferentialPrivacyServerSideFixedClipping)
        strategy = wrapper(strategy, noise_multiplier=spec.privacy.noise_multiplier,
                           clipping_norm=spec.privacy.clipping_norm, num_sampled_clients=sampled)
    return strategy


def run(job: JobFile, job_dir: Path | None = None) -> int:
    """Run the job's rounds; write the trained ONNX; emit progress. Returns the exit code."""
    spec = job.spec
    net = mlp.new_model(job.seed)
    names = list(net.state_dict())
    what = "checkpoint" if job.resume_path else "starting model"
    try:
        if job.resume_path:
            initial = checkpoint.read(Path(job.resume_path))
        elif job.model_path:
            initial = mlp.parameters_from_onnx(Path(job.model_path).read_bytes(), names)
        else:
            initial = mlp.get_parameters(net)
        mlp.set_parameters(net, initial)
    except Exception as exc:  # noqa: BLE001 - any unreadable model is this job's failure, with its reason
        emit(RoundProgress("failed", reason=f"{what}: {exc}"))
        return 1
    if job.start_round >= spec.rounds:  # every round was done before the crash: only the export is left
        return _export(net, job, initial)
    test = load_shard(Path(job.data_path)) if job.data_path and Path(job.data_path).exists() else None

    def evaluate(arrays: list[np.ndarray]) -> tuple[float | None, float | None]:
        if test is None:
            return None, None
        mlp.set_parameters(net, arrays)
        return mlp.evaluate(net, test.x, test.y)

    privacy = spec.privacy
    tracker = RoundTracker(evaluate, lambda rnd: gaussian_epsilon(privacy.noise_multiplier, rnd)
                           if privacy is not None and rnd > 0 else None,
                           offset=job.start_round, save=lambda rnd, arrays: _checkpoint(job, rnd, arrays))
    strategy = build_strategy(spec, initial, tracker, job.clients)
    rounds = flwr.server.ServerConfig(num_rounds=spec.rounds - job.start_round)
    manager = StartedClientsManager(max(job.clients, spec.min_clients),
                                    expected_file=job_dir / EXPECTED_FILE if job_dir else None)
    flwr.server.start_server(server_address=job.address, config=rounds, strategy=strategy,
                             client_manager=manager)
    if not tracker.latest:
        emit(RoundProgress("failed", reason="no round completed"))
        return 1
    return _export(net, job, tracker.latest)


def _checkpoint(job: JobFile, rnd: int, arrays: list[np.ndarray]) -> str:
    """Write round ``rnd``'s checkpoint (none without ``checkpoint_dir``); drop the one of ``rnd - 2``."""
    if not job.checkpoint_dir:
        return ""
    folder = Path(job.checkpoint_dir)
    path = checkpoint.write(arrays, folder / f"checkpoint-{rnd}.npz")
    (folder / f"checkpoint-{rnd - 2}.npz").unlink(missing_ok=True)
    return str(path)


def _export(net: Any, job: JobFile, arrays: list[np.ndarray]) -> int:
    """The final parameters as ONNX at ``out_path``, announced by the ``done`` line; exit code 0."""
    mlp.set_parameters(net, arrays)
    Path(job.out_path).write_bytes(mlp.to_onnx(net))
    emit(RoundProgress("done", job.spec.rounds, result_path=job.out_path))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    try:
        job = JobFile.read(Path(args[0]))
    except (IndexError, OSError, ValueError) as exc:
        emit(RoundProgress("failed", reason=f"job file: {exc}"))
        return 1
    return run(job, Path(args[0]).parent)


if __name__ == "__main__":
    sys.exit(main())
