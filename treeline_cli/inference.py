"""Drive requests through a deployed pipeline and summarise what was measured.

Latency is measured with one request in flight (what one caller sees); throughput with
several in flight, so a pipeline of stages on different nodes can overlap them. Every
figure comes from requests actually sent in this run.

Requests address the *service*: a :class:`~node_engine.data_plane.service_client.ServiceClient`
sends them to the entry a resolver names and retries a failed one (same request id) on the
entry the resolver names next, so a run survives a node being killed while the service is
re-placed. A request that still fails by its deadline is counted in ``failed`` (with its
reason) instead of aborting the run; latency figures cover answered requests only.

Keys: a service whose SLA asks for privacy (``privacy`` in its model block) admits only
requests signed with its caller key (docs/contracts.md, "Data-plane security"). The
:func:`service_resolver` takes it from the service document the root returns to the
service's owner (``caller_key``), on every resolve, so a rotated key is picked up; a key
given to :func:`run_requests` is used when the document names none.

``random_inputs`` is re-exported from :mod:`treeline_cli.input_values` (valid values per input).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from node_engine.data_plane.service_client import Outcome, Resolver, RetryPolicy, ServiceClient
from treeline_cli.input_values import Sample, placement_inputs, random_inputs
from treeline_cli.root_client import RootClient

log = logging.getLogger(__name__)
CHUNK = 200  # requests sent per infer_many call by run_requests (at least 10 x in flight)

__all__ = ["InferenceReport", "merge", "random_inputs", "run_requests", "service_resolver", "static_resolver",
           "summarize"]


LINK_SUFFIX = "->link"  # timing keys "<stage_key>->link": emulated transfer time to the next stage


@dataclass
class InferenceReport:
    """What one run measured; latency figures are over answered requests (NaN if none was)."""

    requests: int
    p50_ms: float
    p99_ms: float
    mean_ms: float
    throughput_rps: float
    in_flight: int
    stage_ms: dict[str, float] = field(default_factory=dict)  # mean compute ms per stage key
    link_ms: dict[str, float] = field(default_factory=dict)  # mean emulated transfer ms after a stage
    latencies_ms: list[float] = field(default_factory=list, repr=False)
    wall_s: float = 0.0
    samples: dict[str, list[float]] = field(default_factory=dict, repr=False)  # timing key -> ms
    failed: int = 0  # requests that got no answer by their deadline (or a non-retryable error)
    errors: dict[str, int] = field(default_factory=dict)  # failure reason -> how many requests


def static_resolver(placement: dict[str, Any]) -> Resolver:
    """A resolver that always names the entry of ``placement`` (no failover to a new placement)."""
    entry = placement["entry"]
    endpoint, stage_key = str(entry["endpoint"]), str(entry["stage_key"])
    return lambda: (endpoint, stage_key)


def service_resolver(root_url: str, service_id: str) -> Resolver:
    """A resolver asking the root API for the entry of ``service_id``'s current placement.

    Each call is one ``GET /api/service/<id>``; it raises (and the ServiceClient retries it)
    while the service has no placement, e.g. while it is being re-placed. It answers
    ``(endpoint, stage_key, caller_key)``; the key is "" when the document carries none.
    """
    client = RootClient(root_url)

    def resolve() -> tuple[str, str, str]:
        service = client.service(service_id)
        entry = (service.get("placement") or {}).get("entry") or {}
        if not entry.get("endpoint") or not entry.get("stage_key"):
            status = service.get("status")
            raise RuntimeError(f"service {service_id} has no placement entry (status {status})")
        return str(entry["endpoint"]), str(entry["stage_key"]), caller_key_of(service)

    return resolve


def caller_key_of(service: dict[str, Any]) -> str:
    """The hex caller key a service document carries for its owner ("" if none)."""
    key = service.get("caller_key")
    return key if isinstance(key, str) else ""


def run_requests(
    placement: dict[str, Any], n: int, in_flight: int = 1, seed: int = 0, timeout: float = 60.0,
    resolver: Resolver | None = None, policy: RetryPolicy | None = None, service: str = "",
    key: str = "", feed: list[Sample] | None = None,
) -> InferenceReport:
    """Send ``n`` requests to the service and measure them.

    ``placement`` gives the input specs (every input gets valid values of its kind,
    :mod:`treeline_cli.input_values`), and the entry unless ``resolver`` is given (pass
    :func:`service_resolver` to follow the service to a new placement). ``feed`` (samples, e.g.
    from an ``--inputs`` file) is sent instead, in turn. ``timeout`` is each request's deadline,
    retries included, unless ``policy`` says otherwise. ``key``: the service's hex caller key,
    used when the resolver names none.
    """
    resolve = resolver or static_resolver(placement)
    if policy is None:
        policy = RetryPolicy(deadline=timeout, attempt_timeout=min(RetryPolicy.attempt_timeout, timeout))
    # generated before the clock starts
    inputs = ([feed[i % len(feed)] for i in range(n)] if feed
              else list(random_inputs(placement_inputs(placement), n, seed)))
    name = service or str(placement.get("service_id") or placement["entry"].get("stage_key", "service"))
    outcomes: list[Outcome] = []
    wall_s = 0.0
    chunk = max(CHUNK, in_flight * 10)
    with ServiceClient(resolve, service=name, policy=policy, key=key) as client:
        for first in range(0, n, chunk):  # in chunks: a service that is gone stops the run early
            started = time.perf_counter()
            done = client.infer_many(inputs[first:first + chunk], max_in_flight=in_flight)
            wall_s += time.perf_counter() - started
            outcomes += done
            if done and all(o.error is not None for o in done) and first + chunk < n:
                log.error("every one of the last %d requests failed; %d not sent", len(done),
                          n - first - chunk)
                break
    samples: dict[str, list[float]] = {}
    errors: Counter[str] = Counter()
    latencies: list[float] = []
    for outcome in outcomes:
        if outcome.error is not None:
            errors[outcome.error.reason] += 1
            continue
        latencies.append(outcome.latency_s * 1000.0)
        for key, ms in outcome.timings.items():
            samples.setdefault(key, []).append(float(ms))
    unsent = n - len(outcomes)
    if unsent:
        errors["not sent: every request of the chunk before failed"] += unsent
    if errors:
        log.warning("%d of %d requests failed: %s", sum(errors.values()), n, dict(errors))
    return summarize(latencies, wall_s, samples, in_flight, failed=sum(errors.values()), errors=dict(errors))


def summarize(latencies_ms: list[float], wall_s: float, samples: dict[str, list[float]],
              in_flight: int, failed: int = 0, errors: dict[str, int] | None = None) -> InferenceReport:
    """Percentiles, throughput and per-stage means of raw measurements (answered requests only)."""
    latencies = np.array(latencies_ms, dtype=float)
    answered = len(latencies_ms)

    def pct(q: float) -> float:
        return float(np.percentile(latencies, q)) if answered else float("nan")

    return InferenceReport(
        requests=answered,
        p50_ms=pct(50),
        p99_ms=pct(99),
        mean_ms=float(latencies.mean()) if answered else float("nan"),
        throughput_rps=answered / wall_s if wall_s > 0 else 0.0,
        in_flight=in_flight,
        stage_ms={key: float(np.mean(v)) for key, v in samples.items() if not key.endswith(LINK_SUFFIX)},
        link_ms={key[: -len(LINK_SUFFIX)]: float(np.mean(v)) for key, v in samples.items()
                 if key.endswith(LINK_SUFFIX)},
        latencies_ms=list(latencies_ms),
        wall_s=wall_s,
        samples=samples,
        failed=failed,
        errors=dict(errors or {}),
    )


def merge(reports: list[InferenceReport]) -> InferenceReport:
    """One report over several runs of the same deployment (e.g. interleaved rounds)."""
    samples: dict[str, list[float]] = {}
    for report in reports:
        for key, values in report.samples.items():
            samples.setdefault(key, []).extend(values)
    errors: Counter[str] = Counter()
    for report in reports:
        errors.update(report.errors)
    return summarize([ms for r in reports for ms in r.latencies_ms], sum(r.wall_s for r in reports), samples,
                     reports[0].in_flight, failed=sum(r.failed for r in reports), errors=dict(errors))
