"""After a rollback: what a re-plan deploys, what the cluster tells the root, what the root and
the CLI show (pure parts; the whole path runs in tests/e2e/test_rollout_restart.py)."""

from __future__ import annotations

from typing import Any

import pytest

from cluster_orchestrator.deployments import desired_of, job_report, refused, serving_job
from root_orchestrator.pushes import _service_model, _serving_model
from treeline_cli.views import event_detail
from treeline_common.jobs import ClusterPush, JobRequest, ModelRef

V1, V2 = "1" * 64, "2" * 64


def job(sha256: str, version: int) -> dict[str, Any]:
    return JobRequest(service_id="s", instance=0, microservice={},
                      model=ModelRef(name="m", version=version, sha256=sha256)).to_dict()


def rolled_back_doc(**extra: Any) -> dict[str, Any]:
    """A deployment serving v1 whose job asks for v2, which its canary refused."""
    return {"deployment_id": "s-0", "service_id": "s", "instance": 0, "status": "RUNNING", "job": job(V2, 2),
            "serving_model": V1, "rolled_back_model": V2,
            "serving_ref": {"name": "m", "version": 1, "sha256": V1, "signature": None}, **extra}


def test_a_replan_of_a_refused_job_deploys_the_serving_version() -> None:
    doc = rolled_back_doc()
    assert refused(doc) and desired_of(doc).rolled_back
    assert serving_job(doc).model == ModelRef(name="m", version=1, sha256=V1)
    # a new request (another model) is no longer refused: it is planned as asked
    assert serving_job({**doc, "job": job("3" * 64, 3)}).model.version == 3
    # a serving_ref that does not describe what serves is not trusted
    assert serving_job({**doc, "serving_model": "4" * 64}).model.version == 2
    assert serving_job({k: v for k, v in doc.items() if k != "serving_ref"}).model.version == 2


def test_the_push_names_the_serving_version_and_the_refused_one() -> None:
    report = job_report(rolled_back_doc())
    assert report.serving_model == ModelRef(name="m", version=1, sha256=V1) and report.refused_sha256 == V2
    decoded = ClusterPush.from_dict(ClusterPush(jobs=(report,)).to_dict()).jobs[0]
    assert decoded.serving_model == report.serving_model and decoded.refused_sha256 == V2
    promoted = job_report({**rolled_back_doc(), "rolled_back_model": None})
    assert promoted.refused_sha256 == ""
    # a push from a cluster without these fields still decodes
    old = ClusterPush(jobs=(report,)).to_dict()
    for body in old["jobs"]:
        del body["serving_model"], body["refused_sha256"]
    assert ClusterPush.from_dict(old).jobs[0].serving_model is None


def test_the_root_records_what_serves_on_the_instance_and_the_service() -> None:
    inst: dict[str, Any] = {"instance": 0, "model": {"name": "m", "version": 2, "sha256": V2}}
    _serving_model(inst, job_report(rolled_back_doc()))
    assert inst["model"] == {"name": "m", "version": 1, "sha256": V1} and inst["refused_model"] == V2
    resolved = {"name": "m", "version": 2, "sha256": V2}
    service = {"model": {"name": "m", "version": "stable", "resolved": resolved}}
    assert _service_model(service, inst)["model"] == {"name": "m", "version": "stable",
                                                      "resolved": inst["model"]}
    chosen = {"name": "m", "version": 1, "sha256": V1, "variant_choice": {"x": 1}}
    kept: dict[str, Any] = {"instance": 0, "model": chosen}
    _serving_model(kept, job_report(rolled_back_doc()))
    assert kept["model"]["variant_choice"] == {"x": 1}  # same version: the record is kept as it is


@pytest.mark.parametrize(("event", "words"), [
    ({"kind": "rollout_check", "verdict": "wait", "reason": "3 of 20 requests answered",
      "figures": {"live_requests": 3, "probe_requests": 0, "latency_ms": 1.5, "disagreement": 0.0}},
     "wait; 3 of 20 requests answered; live 3, probe 0; latency 1.50 ms; disagreement 0%"),
    ({"kind": "canary_share", "share": 0.1, "node": "server-1"}, "10% of requests via server-1"),
    ({"kind": "promoted", "reason": "no live request for 10 s", "canary_s": 12.25,
      "figures": {"live_requests": 0, "probe_requests": 8}},
     "no live request for 10 s; live 0, probe 8; canary 12.2 s"),
    ({"kind": "rolled_back", "reason": "disagrees", "rollback_s": 0.4, "generation": 1},
     "disagrees; rollback 0.4 s; generation 1"),
])
def test_rollout_events_show_their_figures(event: dict[str, Any], words: str) -> None:
    assert event_detail({"ts": 0, "cause": "c", **event}) == words

