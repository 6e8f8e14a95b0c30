"""Pure parts of the CLI: name resolution, grouped unschedulable reasons, plurals, the progress step."""

from __future__ import annotations

import io

import pytest

from treeline_cli.errors import Failure, UsageError
from treeline_cli.output import Output, plural
from treeline_cli.reasons import grouped_reasons
from treeline_cli.resolve import inference_target, resolve_service, split_model_ref

APPS = [{"applicationID": "a1", "application_name": "vision"},
        {"applicationID": "a2", "application_name": "vision"},
        {"applicationID": "a3", "application_name": "speech"}]


def svc(sid: str, app: str, name: str, status: str) -> dict:
    return {"service_id": sid, "application_id": app, "microservice_name": name, "status": status}


def test_infer_picks_the_running_service_over_a_failed_application_of_the_same_name() -> None:
    services = [svc("s1", "a1", "classifier", "FAILED"), svc("s2", "a2", "classifier", "RUNNING")]
    assert inference_target("vision", None, APPS, services)["service_id"] == "s2"
    assert inference_target("vision", "classifier", APPS, services)["service_id"] == "s2"
    assert inference_target("s1", None, APPS, services)["service_id"] == "s1"  # an id is exact
    assert inference_target("a1", None, APPS, services)["service_id"] == "s1"


def test_infer_refuses_two_running_candidates_and_names_missing_services() -> None:
    services = [svc("s1", "a1", "classifier", "RUNNING"), svc("s2", "a2", "classifier", "RUNNING"),
                svc("s3", "a3", "asr", "RUNNING")]
    with pytest.raises(UsageError, match=r"matches 2 services: s1 .*s2"):
        inference_target("vision", None, APPS, services)
    with pytest.raises(Failure, match="there is no service 'nope' in application 'speech' \\(it has: asr\\)"):
        inference_target("speech", "nope", APPS, services)
    with pytest.raises(Failure, match="no application or service 'video' \\(applications: speech, vision\\)"):
        inference_target("video", None, APPS, services)


def test_service_names_resolve_by_id_name_or_app_slash_service() -> None:
    services = [svc("s1", "a1", "classifier", "FAILED"), svc("s3", "a3", "classifier", "RUNNING")]
    assert resolve_service("speech/classifier", services, APPS)["service_id"] == "s3"
    assert resolve_service("s1", services, APPS)["service_id"] == "s1"
    with pytest.raises(UsageError, match="2 services are named 'classifier'"):
        resolve_service("classifier", services, APPS)


def test_model_refs() -> None:
    assert split_model_ref("tiny") == ("tiny", "latest")
    assert split_model_ref("tiny:3") == ("tiny", "3")
    with pytest.raises(UsageError):
        split_model_ref(":3")


def test_reasons_are_grouped_once_per_distinct_reason_with_node_names() -> None:
    service = {
        "status": "FAILED",
        "status_detail": "unschedulable: *: no plan meets 5 ms; node-1: memory: needs 300 MB, has 256 MB; "
                         "node-2: memory: needs 300 MB, has 256 MB; node-3: offline: node is offline",
        "explanation": {"filtered": {"node-1": {"code": "memory", "message": "needs 300 MB, has 256 MB"}},
                        "filtered_or_unused": {"node-3": "offline: node is offline"},
                        "node_names": {"node-1": "rpi4-1", "node-2": "rpi4-2"}},
    }
    assert grouped_reasons(service) == [
        ("needs 300 MB, has 256 MB", ["rpi4-1", "rpi4-2"]),
        ("node is offline", ["node-3"]),
        ("no plan meets 5 ms", ["all nodes"]),
    ]
    assert grouped_reasons({"status": "FAILED", "status_detail": "model download failed: 404"}) == [
        ("model download failed: 404", [])]


@pytest.mark.parametrize(("n", "text"), [(0, "0 stages"), (1, "1 stage"), (2, "2 stages")])
def test_plural(n: int, text: str) -> None:
    assert plural(n, "stage") == text
    assert plural(1, "device class", "device classes") == "1 device class"


def test_a_quick_step_prints_nothing_off_a_terminal() -> None:
    err = io.StringIO()
    out = Output(stdout=io.StringIO(), stderr=err)
    with out.step("fast") as update:
        update("still fast")
    assert err.getvalue() == ""
