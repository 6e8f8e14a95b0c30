"""ML-aware cluster choice: ask the best few clusters for a dry-run plan, take the cheapest.

The second stage after :mod:`.cluster_filter`. Coarse aggregates cannot say how fast a cut
model will run on a cluster (that depends on its devices' profiles, its links and the
planner), so the root asks at most ``ask`` candidates, in parallel, for the plan they would
make (``POST <cluster>/api/plan``, the same :class:`~treeline_common.jobs.JobRequest` a
deployment carries; the cluster deploys nothing) and orders them by predicted cost: the SLA's
objective (``latency_ms`` for ``latency``, the pipeline ``bottleneck_ms`` for ``throughput``),
ties by energy per inference, then by the coarse order. The caller deploys to the first and
falls back down the order when a cluster refuses or fails.

The order puts clusters whose plan is schedulable first (cheapest first), then those not asked
or whose dry run failed (coarse order), then those that answered unschedulable (a real
deployment there waits for capacity and is retried when nodes join, which beats refusing the
job). With one candidate no dry run is made: there is nothing to choose.

Every choice is described by an event (``kind: cluster_choice``) with each candidate's answer,
the clusters filtered out and why, and the time the choice took; the caller stores it in the
service's events.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

from root_orchestrator.cluster_client import ClusterClient
from root_orchestrator.dryrun_summary import summary_of
from treeline_common.errors import TreelineError

log = logging.getLogger(__name__)

DEFAULT_ASK = 3
DEFAULT_CHOICE_TIMEOUT_S = 30.0
PREDICTED_FIELDS = ("objective", "latency_ms", "bottleneck_ms", "throughput_rps", "energy_mj")


def plan_cost(predicted: Mapping[str, Any], objective: str) -> tuple[float, float]:
    """(objective cost, energy mJ) of a plan's predictions; ``inf`` for what is missing."""
    key = "bottleneck_ms" if objective == "throughput" else "latency_ms"
    cost = predicted.get(key)
    energy = predicted.get("energy_mj")
    return (float(cost) if isinstance(cost, int | float) else float("inf"),
            float(energy) if isinstance(energy, int | float) else float("inf"))


@dataclass(frozen=True)
class Choice:
    """The clusters to try, in order, and the event describing why."""

    order: tuple[dict[str, Any], ...]
    answers: tuple[dict[str, Any], ...] = ()
    rejected: Mapping[str, str] = field(default_factory=dict)
    duration_ms: float = 0.0
    summaries: Mapping[str, dict[str, Any]] = field(default_factory=dict)  # cluster id -> plan summary

    @property
    def tie(self) -> bool:
        """The two cheapest schedulable answers predict the same cost (within 1 %): the coarse
        order decided (typically no cluster has measured profiles yet, so both predict from the
        same regression)."""
        costs = sorted(float(a["cost"]) for a in self.answers
                       if a.get("ok") and a.get("schedulable") and isinstance(a.get("cost"), int | float))
        return len(costs) >= 2 and costs[1] - costs[0] <= 0.01 * max(costs[0], 1e-9)

    def event(self, chosen: Mapping[str, Any] | None, cause: str, now: float) -> dict[str, Any]:
        """The ``cluster_choice`` event for the service's history (``chosen`` = where it went)."""
        message = f"deployed to {chosen.get('cluster_name')}" if chosen else "no cluster took it"
        if chosen and self.tie:
            message += " (a tie on predicted cost: the clusters' aggregates decided)"
        return {"ts": now, "kind": "cluster_choice", "cause": cause,
                "chosen": chosen.get("cluster_name") if chosen else None,
                "chosen_id": chosen.get("cluster_id") if chosen else None,
                "candidates": list(self.answers), "rejected": dict(self.rejected),
                "duration_ms": round(self.duration_ms, 2), "tie": self.tie, "message": message}


class ClusterChooser:
    """Asks dry runs through the :class:`ClusterClient`; one shared pool of ``ask`` threads."""

    def __init__(self, client: ClusterClient, ask: int = DEFAULT_ASK,
                 timeout_s: float = DEFAULT_CHOICE_TIMEOUT_S) -> None:
        self.client = client
        self.ask = max(1, int(ask))
        self.timeout_s = timeout_s
        self._pool = ThreadPoolExecutor(max_workers=max(self.ask, 4), thread_name_prefix="dry-run")

    def _dry_run(self, cluster: Mapping[str, Any], job: dict[str, Any],
                 objective: str) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """(the compact answer for the event, the whole plan summary or None)."""
        started = time.perf_counter()
        summary: dict[str, Any] | None = None
        answer: dict[str, Any] = {"cluster_id": cluster.get("cluster_id"),
                                  "cluster_name": cluster.get("cluster_name")}
        try:
            summary = summary_of(self.client.plan(str(cluster["url"]), job))
        except TreelineError as exc:
            answer.update(ok=False, error=f"{exc.code}: {exc}")
        except Exception as exc:
            log.exception("dry run on %s failed", cluster.get("cluster_name"))
            answer.update(ok=False, error=f"internal: {exc}")
        else:
            cost, energy = plan_cost(summary["predicted"], objective)
            answer.update(ok=True, schedulable=summary["schedulable"], message=summary["message"],
                          predicted={k: summary["predicted"].get(k) for k in PREDICTED_FIELDS},
                          cost=None if cost == float("inf") else cost,
                          energy_mj=None if energy == float("inf") else energy,
                          stages=len(summary["stages"]))
        answer["ms"] = round((time.perf_counter() - started) * 1e3, 2)
        return answer, summary

    def choose(self, candidates: Sequence[Mapping[str, Any]], job: dict[str, Any], objective: str = "latency",
               rejected: Mapping[str, str] | None = None) -> Choice:
        """Order ``candidates`` (already filtered, coarse order) for deployment; see the module
        docstring. Never raises: a failed dry run only moves its cluster down the order."""
        started = time.perf_counter()
        clusters = [dict(c) for c in candidates]
        if len(clusters) <= 1:
            return Choice(tuple(clusters), rejected=dict(rejected or {}),
                          duration_ms=(time.perf_counter() - started) * 1e3)
        asked = clusters[:self.ask]
        futures = [self._pool.submit(self._dry_run, c, job, objective) for c in asked]
        done, _ = wait(futures, timeout=self.timeout_s)
        answers: list[dict[str, Any]] = []
        summaries: dict[str, dict[str, Any]] = {}
        for cluster, future in zip(asked, futures, strict=True):
            if future in done:
                answer, summary = future.result()
                answers.append(answer)
                if summary is not None:
                    summaries[str(cluster.get("cluster_id"))] = summary
            else:
                answers.append({"cluster_id": cluster.get("cluster_id"),
                                "cluster_name": cluster.get("cluster_name"), "ok": False,
                                "error": f"no answer within {self.timeout_s:g} s"})
        coarse = {str(c.get("cluster_id")): i for i, c in enumerate(clusters)}
        by_id = {str(c.get("cluster_id")): c for c in clusters}

        def rank(answer: dict[str, Any]) -> tuple[int, float, float, int]:
            position = coarse[str(answer["cluster_id"])]
            if answer.get("ok") and answer.get("schedulable"):
                cost, energy = plan_cost(answer.get("predicted") or {}, objective)
                return (0, cost, energy, position)
            return (2 if answer.get("ok") else 1, 0.0, 0.0, position)

        ranked = sorted(answers, key=rank)
        unasked = clusters[self.ask:]
        first = [by_id[str(a["cluster_id"])] for a in ranked if rank(a)[0] == 0]
        middle = [by_id[str(a["cluster_id"])] for a in ranked if rank(a)[0] == 1] + unasked
        last = [by_id[str(a["cluster_id"])] for a in ranked if rank(a)[0] == 2]
        return Choice(tuple(first + middle + last), tuple(ranked), dict(rejected or {}),
                      (time.perf_counter() - started) * 1e3, summaries)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
