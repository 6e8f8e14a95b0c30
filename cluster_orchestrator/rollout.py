"""Canary rollouts: when a new model version replaces the serving one, and what the figures decide (pure).

A deployment that serves a model and is asked for another one (a new version registered and
the SLA re-applied, an alias moved) does not switch at once. The deployer brings the new
pipeline up as a second generation (make-before-break, as for any re-plan); then, with the
``canary`` strategy (the default, SLA ``model.rollout``), a *router* stage on the serving
entry's node takes ``canary_share`` of the entry's requests and hands them to the new
pipeline (:mod:`node_engine.stages`), so callers keep addressing the entry they know.
:mod:`.rollout_runner` gathers the figures; :func:`decide` turns them into a verdict:

- **roll back** at once when a probe input failed on the new version, when the new version
  disagrees with the serving one on more than ``max_disagreement`` of the probe inputs, or
  when its latency (the larger of the probe median and the live per-request compute time)
  exceeds ``max_latency_ms``;
- **promote** once the new version answered ``min_requests`` requests (live share plus
  probe) with none of the above;
- **promote** an *idle* service's canary: when the router handed it no live request for
  ``idle_s`` (:data:`IDLE_PROMOTE_S`), or ``timeout_s`` passed, and the probe is *complete*
  (every one of the policy's ``probe`` inputs answered and compared, and the latency figure,
  the probe median when no live one exists, is within the bound). A service without live
  traffic could never reach ``min_requests``, and the probe is then all the evidence there is;
- at ``timeout_s`` without a complete probe, the evidence still counts: **promote** when
  anything was answered with a latency figure within the bound and the probe, if the policy
  asks for one, ran; otherwise **roll back** (no evidence at all: Nomad's
  ``progress_deadline`` with ``auto_revert``);
- otherwise **wait** for more figures.

Nothing here does I/O or reads a clock: elapsed time is a figure.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from deployment_descriptors.views import Microservice, RolloutSpec

ROUTER_STAGE = 999  # stage index of the canary router (in the new generation's key space)
CANARY = "canary"
IMMEDIATE = "immediate"

WAIT, PROMOTE, ROLLBACK = "wait", "promote", "rollback"
IDLE_PROMOTE_S = 10.0  # s without a live request after which a complete probe is enough evidence


class RolloutPolicy(RolloutSpec):
    """The SLA's ``model.rollout`` (:class:`~deployment_descriptors.views.RolloutSpec`) with the
    latency bound resolved (ms; None: unchecked)."""

    @classmethod
    def of(cls, microservice: Microservice) -> RolloutPolicy:
        """The policy of a job's microservice: its ``model.rollout`` block (defaults when absent),
        ``max_latency_ms`` defaulting to the ``e2e_latency`` constraint's threshold."""
        spec = microservice.model.rollout if microservice.model is not None else RolloutSpec()
        latency = spec.max_latency_ms if spec.max_latency_ms is not None \
            else microservice.ml_constraints.latency_ms
        return cls(**{**dataclasses.asdict(spec), "max_latency_ms": latency})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class CanaryFigures:
    """What is known about the canary so far.

    ``elapsed_s``: since the canary started taking requests; ``live_requests``: requests the
    router handed to it; ``probe_requests`` / ``probe_errors``: probe inputs it answered /
    failed on (``first_error`` names one); ``latency_ms``: its latency (None: no figure yet);
    ``disagreement``: share 0..1 of probe inputs on which it disagreed with the serving
    version (None: no probe ran); ``idle_s``: since the last live request reached it (since it
    started taking requests when none did).
    """

    elapsed_s: float
    live_requests: int = 0
    probe_requests: int = 0
    probe_errors: int = 0
    first_error: str = ""
    latency_ms: float | None = None
    disagreement: float | None = None
    idle_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        body = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in dataclasses.asdict(self).items()}
        if not self.first_error:
            body.pop("first_error")
        return body


@dataclass(frozen=True)
class Verdict:
    """``action``: :data:`WAIT`, :data:`PROMOTE` or :data:`ROLLBACK`; ``reason`` says why (people read it)."""

    action: str
    reason: str


def decide(policy: RolloutPolicy, figures: CanaryFigures, idle_s: float = IDLE_PROMOTE_S) -> Verdict:
    """The verdict on a canary (rules in the module docstring; breaches are checked first);
    ``idle_s``: how long without a live request makes a complete probe enough (s)."""
    if figures.probe_errors:
        return Verdict(ROLLBACK, f"{figures.probe_errors} probe request(s) failed on the new version: "
                                 f"{figures.first_error or 'no reason given'}")
    if figures.disagreement is not None and figures.disagreement > policy.max_disagreement:
        return Verdict(ROLLBACK, f"the new version disagrees with the serving one on "
                                 f"{figures.disagreement:.0%} of the probe inputs "
                                 f"(at most {policy.max_disagreement:.0%} allowed)")
    if policy.max_latency_ms is not None and figures.latency_ms is not None \
            and figures.latency_ms > policy.max_latency_ms:
        return Verdict(ROLLBACK, f"latency {figures.latency_ms:.1f} ms exceeds the SLA's "
                                 f"{policy.max_latency_ms:g} ms")
    answered = figures.live_requests + figures.probe_requests
    counted = f"({figures.live_requests} live, {figures.probe_requests} probe)"
    if answered >= policy.min_requests:
        return Verdict(PROMOTE, f"{answered} requests answered within the SLA {counted}")
    timed_out = figures.elapsed_s >= policy.timeout_s
    probed = policy.probe > 0 and figures.probe_requests >= policy.probe \
        and figures.disagreement is not None and figures.latency_ms is not None
    if probed and (timed_out or figures.idle_s >= idle_s):
        why = f"timeout after {policy.timeout_s:g} s" if timed_out \
            else f"no live request for {figures.idle_s:.0f} s"
        return Verdict(PROMOTE, f"{why}; all {figures.probe_requests} probe inputs answered and agreed, "
                                f"latency within the SLA {counted}")
    if timed_out:
        compared = policy.probe == 0 or figures.disagreement is not None
        if answered and figures.latency_ms is not None and compared:
            return Verdict(PROMOTE, f"timeout after {policy.timeout_s:g} s: {answered} of "
                                    f"{policy.min_requests} requests answered, all within the SLA {counted}")
        return Verdict(ROLLBACK, f"timeout: {answered} of {policy.min_requests} requests answered "
                                 f"in {policy.timeout_s:g} s, not enough to judge")
    return Verdict(WAIT, f"{answered} of {policy.min_requests} requests answered")


def wants_canary(policy: RolloutPolicy, serving_model: str | None, new_model: str,
                 serving_nodes_online: bool) -> bool:
    """Whether bringing ``new_model`` up goes through a canary: the deployment serves another
    model (``serving_model``, the digest its placement was built from; None: unknown, as for
    placements made before rollouts existed), the policy asks for one and the serving pipeline
    is whole (a broken one is replaced at once: there is nothing to compare with)."""
    return (policy.strategy == CANARY and serving_model is not None and serving_model != new_model
            and serving_nodes_online)


def router_of(doc: Mapping[str, Any]) -> tuple[str, str] | None:
    """``(node_id, stage key)`` of the canary router a deployment document holds, or None."""
    rollout = doc.get("rollout")
    router = rollout.get("router") if isinstance(rollout, Mapping) else None
    if not isinstance(router, Mapping):
        return None
    return str(router.get("node_id")), str(router.get("stage_key"))
