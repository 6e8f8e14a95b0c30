"""Faults a new user met with federated training (issue 14), each right behaviour pinned.

- an unknown field inside ``training`` (or its ``differential_privacy``) is a 400 on every SLA
  route and one line with exit code 2 on the CLI; elsewhere it stays a warning;
- a starting model the Flower client cannot train (a digits CNN, [N,1,8,8]) is a 400 at
  ``training.model`` on every route, dry run included;
- ``apply --dry-run`` exits 1 when a service (ml-model or ml-training) cannot be scheduled;
- Ctrl-C (a real SIGINT) on ``apply --wait`` / ``training watch`` prints one line and exits 130;
- a service deleted during ``apply --wait`` ends with one line naming it; the timeout's hint names it;
- an unchanged training service whose run ended says how to run it again, and ``deploy SERVICE``
  starts a new run (a second instance);
- the progress view: notices (client lost / rejoined, server restarted) and epsilon; a bar
  readable at 80 columns.
"""

from __future__ import annotations

import io
import os
import signal
import threading
from typing import Any

import pytest
import test_training_operator_cli as operator_cli
from onnx import TensorProto, helper
from rich.console import Console
from test_root_api import _error, ml_sla
from test_training_operator import register_trainable, training_sla
from test_training_operator_cli import Served, _Script

from treeline_cli.errors import Failure
from treeline_cli.training_view import stopped_line, watch_training

served = operator_cli.served  # the fixture: a root served on a loopback port, the CLI run against it
MS = "applications[0].microservices[0]"
ROUTES = ("/api/apply", "/api/application/", "/api/plan")


def _with_training(**fields: Any) -> dict[str, Any]:
    sla = training_sla("tiny:1")
    sla["applications"][0]["microservices"][0]["training"].update(fields)
    return sla


@pytest.mark.parametrize(("fields", "path", "near"), [
    ({"local_epoch": 3}, "training.local_epoch", "local_epochs"),
    ({"differential_privacy": {"clipping_norm": 1.0, "noise_multiplier": 0.5, "sid": "client"}},
     "training.differential_privacy.sid", "side"),
])
def test_an_unknown_training_field_is_an_error_on_every_route(served: Served, fields: dict[str, Any],
                                                              path: str, near: str) -> None:
    register_trainable(served.root)
    for route in ROUTES:
        err = _error(served.root.http.post(route, json=_with_training(**fields)), 400, "INVALID_INPUT")
        assert err["details"] == [{"path": f"{MS}.{path}",
                                   "message": f"unknown field; did you mean {near!r}?"}], (route, err)
    assert served.root.http.get("/api/applications/").get_json() == []


def test_an_unknown_training_field_is_one_cli_line_exit_2_and_other_blocks_still_warn(
        served: Served, capsys: pytest.CaptureFixture[str]) -> None:
    register_trainable(served.root)
    served.root.register_cluster("c1", "http://c1:1")
    code, out, err = served.cli(capsys, "apply", served.sla_file(_with_training(local_epoch=3)))
    assert code == 2 and out == "", (out, err)
    why = f"{MS}.training.local_epoch: unknown field; did you mean 'local_epochs'?"
    assert len(err) == 1 and why in err[0], err
    sla = training_sla("tiny:1")
    sla["applications"][0]["microservices"][0]["memroy"] = 128  # an Oakestra block: still open
    r = served.root.http.post("/api/apply", json=sla)
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["warnings"] == [{"path": f"{MS}.memroy", "message": "unknown field, ignored; "
                                                                           "did you mean 'memory'?"}]


def _cnn_onnx() -> bytes:
    """The shape of `treeline model register --builtin digits_cnn`: x [N,1,8,8] -> [N,10]."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])
    shape = helper.make_tensor("shape", TensorProto.INT64, [2], [-1, 64])
    w = helper.make_tensor("w", TensorProto.FLOAT, [64, 10], [0.0] * 640)
    nodes = [helper.make_node("Reshape", ["x", "shape"], ["flat"]),
             helper.make_node("MatMul", ["flat", "w"], ["y"])]
    graph = helper.make_graph(nodes, "cnn", [x], [y], initializer=[shape, w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def test_a_model_the_flower_client_cannot_train_is_refused_everywhere(
        served: Served, capsys: pytest.CaptureFixture[str]) -> None:
    served.root.register_model("digits_cnn", _cnn_onnx())
    served.root.register_cluster("c1", "http://c1:1")
    message = ("digits_cnn:1 is not a model the Flower client can train: input [N,1,8,8], expected float32 "
               "[N,64] -> [N,10] (the digits MLP: treeline model register --builtin digits_mlp)")
    for route in ROUTES:
        err = _error(served.root.http.post(route, json=training_sla("digits_cnn:1")), 400, "INVALID_INPUT")
        assert err["details"] == [{"path": f"{MS}.training.model", "message": message}], (route, err)
    sla = served.sla_file(training_sla("digits_cnn"))
    code, _, err_lines = served.cli(capsys, "apply", "--dry-run", sla)
    assert code == 2 and len(err_lines) == 1 and f"{MS}.training.model: {message}" in err_lines[0], err_lines
    assert served.root.http.get("/api/applications/").get_json() == [] and not served.root.clusters.planned


def test_dry_run_exits_1_when_a_service_cannot_be_scheduled(
        served: Served, capsys: pytest.CaptureFixture[str]) -> None:
    served.root.register_model()
    register_trainable(served.root, "digits")
    served.root.register_cluster("c1", "http://c1:1")
    served.root.clusters.plans["http://c1:1"] = {"schedulable": False, "message": "no node has 64 GB",
                                                 "strategy": "", "predicted": {}, "stages": [], "reasons": {}}
    code, out, _ = served.cli(capsys, "apply", "--dry-run", served.sla_file(ml_sla()))
    assert code == 1 and "NOT schedulable on c1: no node has 64 GB" in out, out
    sla = served.sla_file(training_sla("digits:1"))
    code, out, _ = served.cli(capsys, "apply", "--dry-run", "-o", "json", sla)
    assert code == 1 and '"schedulable": false' in out, out
    served.root.clusters.plans.clear()  # the fake's default answer: schedulable
    code, out, _ = served.cli(capsys, "apply", "--dry-run", served.sla_file(ml_sla()))
    assert code == 0 and "schedulable on c1" in out, out


def _interrupt_once_watched(served: Served) -> threading.Thread:
    """A real SIGINT to this process once the CLI follows a service's events."""
    served.events_asked.clear()

    def send() -> None:
        assert served.events_asked.wait(30)
        os.kill(os.getpid(), signal.SIGINT)

    thread = threading.Thread(target=send)
    thread.start()
    return thread


def test_ctrl_c_leaves_the_training_running_and_says_so(
        served: Served, capsys: pytest.CaptureFixture[str]) -> None:
    register_trainable(served.root)
    served.root.register_cluster("c1", "http://c1:1")
    sender = _interrupt_once_watched(served)
    code, out, err = served.cli(capsys, "apply", "--wait", served.sla_file(training_sla("tiny:1")))
    sender.join()
    assert code == 130, (out, err)
    said = "stopped watching; fl keeps training: treeline training watch fl (or treeline delete service fl)"
    assert err[-1] == stopped_line("fl") == said, err
    sender = _interrupt_once_watched(served)
    code, out, err = served.cli(capsys, "training", "watch", "fl")
    sender.join()
    assert code == 130 and err[-1] == stopped_line("fl"), (out, err)
    assert served.root.http.get("/api/services/").get_json()[0]["status"] not in ("DELETED", "FAILED")


def test_a_service_deleted_while_watched_is_named_and_the_timeout_hint_names_it(
        served: Served, capsys: pytest.CaptureFixture[str]) -> None:
    register_trainable(served.root)
    served.root.register_cluster("c1", "http://c1:1")
    served.events_asked.clear()

    def delete() -> None:
        assert served.events_asked.wait(30)
        [service] = served.root.http.get("/api/services/").get_json()
        assert served.root.http.delete(f"/api/service/{service['service_id']}").status_code == 200

    deleter = threading.Thread(target=delete)
    deleter.start()
    code, _, err = served.cli(capsys, "apply", "--wait", served.sla_file(training_sla("tiny:1")))
    deleter.join()
    assert code == 1 and err[-1] == "error: service fl was deleted while training", err
    now = iter(range(0, 100, 10))
    console = Console(file=io.StringIO())
    with pytest.raises(Failure) as failure:
        watch_training(_Script(["RUNNING"]), {"service_id": "s1"}, console,  # type: ignore[arg-type]
                       timeout=5, clock=lambda: float(next(now)), sleep=lambda _s: None)
    assert "treeline training watch fl" in failure.value.line(), failure.value.line()


def _push(served: Served, cluster_id: str, service_id: str, instance: int) -> None:
    job = {"service_id": service_id, "instance": instance, "status": "DELETED",
           "status_detail": f"training done: registered tiny:{instance + 2}", "explanation": None,
           "events": [{"ts": 200.0 + instance, "kind": "training_registered", "cause": "training",
                       "model": f"tiny:{instance + 2}"}]}
    r = served.root.http.post(f"/api/information/{cluster_id}", json={"aggregate": {}, "jobs": [job]})
    assert r.status_code == 200 and r.get_json()["updated"] == 1, r.get_json()


def test_an_ended_training_is_run_again_with_deploy_service(
        served: Served, capsys: pytest.CaptureFixture[str]) -> None:
    register_trainable(served.root)
    cluster_id = served.root.register_cluster("c1", "http://c1:1")
    sla = served.sla_file(training_sla("tiny:1"))
    code, out, err = served.cli(capsys, "apply", sla)
    assert code == 0, (out, err)
    [(_, service_id, number, _)] = served.root.clusters.deployed
    _push(served, cluster_id, service_id, number)
    code, out, err = served.cli(capsys, "apply", sla)
    assert code == 0 and "unchanged" in out, (out, err)
    assert "fl: its last training run ended; run it again: treeline deploy fl" in out, out
    assert len(served.root.clusters.deployed) == 1  # an unchanged SLA does not train again
    served.events_asked.clear()

    def cluster() -> None:
        assert served.events_asked.wait(30)
        _push(served, cluster_id, service_id, served.root.clusters.deployed[-1][2])

    pusher = threading.Thread(target=cluster)
    pusher.start()
    code, out, err = served.cli(capsys, "deploy", "fl", "--timeout", "60")
    pusher.join()
    assert code == 0 and "fl (" in out and "trained: registered tiny:3" in out, (out, err)
    assert [d[2] for d in served.root.clusters.deployed] == [0, 1]


def test_notices_and_epsilon_show_and_the_bar_fits_80_columns() -> None:
    events = [{"ts": 1.0, "kind": "training_round", "instance": 0, "round": 12, "accuracy": 0.8123,
               "loss": 0.5, "clients": 3, "epsilon": 1.234},
              {"ts": 2.0, "kind": "training_client_lost", "instance": 0, "message": "client n3 failed: boom"},
              {"ts": 3.0, "kind": "training_server_restarted", "instance": 0,
               "message": "server lost; resuming on n2 after round 12"}]

    class Client(_Script):
        def service(self, service_id: str) -> dict[str, Any]:
            doc = super().service(service_id)
            doc.update(microservice_name="a-rather-long-training-name",
                       microservice={"training": {"rounds": 100}})
            return doc

        def service_events(self, service_id: str) -> list[dict[str, Any]]:
            return events

    lines = Console(file=io.StringIO(), width=4096)
    watch_training(Client(["RUNNING", "DELETED"]), {"service_id": "s1"}, Console(file=io.StringIO()),  # type: ignore[arg-type]
                   lines=lines, interval=0.0, sleep=lambda _s: None)
    printed = lines.file.getvalue().splitlines()  # type: ignore[attr-defined]
    assert "round 12/100: accuracy 0.812, loss 0.500, 3 clients, epsilon 1.23" in printed, printed
    assert "client lost: client n3 failed: boom" in printed, printed
    assert "server restarted: server lost; resuming on n2 after round 12" in printed, printed
    bar = Console(file=io.StringIO(), force_terminal=True, width=80, color_system=None)
    watch_training(Client(["DEPLOYING", "RUNNING", "DELETED"]), {"service_id": "s1"}, bar,  # type: ignore[arg-type]
                   interval=0.0, sleep=lambda _s: None)
    drawn = bar.file.getvalue()  # type: ignore[attr-defined]
    last = [line for line in drawn.replace("\r", "\n").splitlines() if "12/100" in line]
    assert last and "acc 0.812 loss 0.500 3 cl ε 1.23" in last[-1], drawn
    final = last[-1].split("\x1b[2K")[-1]
    assert final.startswith("a-rather-long-t… ") and len(final.rstrip()) <= 80 and "1…" not in drawn, final
    assert "client lost: client n3 failed: boom" in drawn, drawn
    assert "a-rather-long-training-name: DEPLOYING" in drawn, drawn  # a line above the bar, once
