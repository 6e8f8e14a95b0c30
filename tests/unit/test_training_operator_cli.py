"""``treeline`` (in-process) against a real root HTTP server on a loopback port: training SLAs.

- ``apply`` of a training SLA whose starting model does not resolve fails (exit 1) with one
  line naming ``applications[0].microservices[0].training.model``; nothing is stored. An
  ``ml-model`` SLA naming a missing model is refused at deployment: the line names
  ``...model.name`` and the application this apply created is removed.
- ``apply --dry-run`` shows the training placement (server, clients, each rejected node with its
  reason) or why it cannot be scheduled, naming the field.
- ``describe service`` shows the Flower placement, each round's accuracy, loss and clients, and
  the registered result; ``training watch`` and ``apply --wait`` follow the rounds (exit 0 once
  registered, 1 with the one-line reason when the training fails).

The cluster is the root's :class:`FakeClusterClient`; its pushes are posted to the root's push route.
"""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from test_root_api import Root, ml_sla
from test_training_operator import _placement, register_trainable, training_sla
from werkzeug.serving import make_server

from root_orchestrator.stores import open_stores
from treeline_cli.errors import Failure
from treeline_cli.main import main
from treeline_cli.training_view import watch_training

PATH = "applications[0].microservices[0]"


class Served:
    """A :class:`Root` served over HTTP on a free loopback port, and the CLI run against it."""

    def __init__(self, root: Root, tmp: Path) -> None:
        self.root = root
        self.tmp = tmp
        self.events_asked = threading.Event()  # set once the CLI asked for a service's events
        inner = root.app.wsgi_app

        def app(environ: dict[str, Any], start_response: Any) -> Any:
            if str(environ.get("PATH_INFO", "")).endswith("/events"):
                self.events_asked.set()
            return inner(environ, start_response)

        root.app.wsgi_app = app  # type: ignore[method-assign]
        self.server = make_server("127.0.0.1", 0, root.app, threaded=True)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.token = root.token(root.admin)

    def cli(self, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, list[str]]:
        capsys.readouterr()
        code = main(["--token", self.token, *argv, "--root-url", self.url])
        captured = capsys.readouterr()
        return code, captured.out, [line for line in captured.err.splitlines() if line.strip()]

    def sla_file(self, sla: dict[str, Any], name: str = "sla.json") -> str:
        path = self.tmp / name
        path.write_text(json.dumps(sla))
        return str(path)

    def push(self, cluster_id: str, service_id: str, status: str, detail: str = "",
             explanation: dict[str, Any] | None = None, events: list[dict[str, Any]] | None = None) -> None:
        job = {"service_id": service_id, "instance": 0, "status": status, "status_detail": detail,
               "explanation": explanation, "events": events or []}
        r = self.root.http.post(f"/api/information/{cluster_id}", json={"aggregate": {}, "jobs": [job]})
        assert r.status_code == 200 and r.get_json()["updated"] == 1, r.get_json()


@pytest.fixture
def served(mongo_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Served]:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    for name in ("TREELINE_ROOT_URL", "TREELINE_TOKEN", "TREELINE_CONFIG", "TREELINE_DATA_DIR"):
        monkeypatch.delenv(name, raising=False)
    stores = open_stores(mongo_url)
    served = Served(Root(stores), tmp_path)
    yield served
    served.server.shutdown()
    stores.close()


def test_apply_of_a_missing_starting_model_names_the_field_and_stores_nothing(
        served: Served, capsys: pytest.CaptureFixture[str]) -> None:
    served.root.register_cluster("c1", "http://c1:1")
    code, out, err = served.cli(capsys, "apply", served.sla_file(training_sla("ghost:1")))
    assert code == 1 and out == "", (out, err)
    assert len(err) == 1 and err[0].startswith(f"error: {PATH}.training.model: starting model ghost:1"), err
    assert served.root.http.get("/api/applications/").get_json() == []


def test_apply_of_a_missing_served_model_is_undone_naming_the_field(
        served: Served, capsys: pytest.CaptureFixture[str]) -> None:
    served.root.register_cluster("c1", "http://c1:1")
    code, out, err = served.cli(capsys, "apply", served.sla_file(ml_sla(name="ghost")))
    assert code == 1, (out, err)
    assert any(line.startswith(f"error: {PATH}.model.name: no model 'ghost'") for line in err), err
    assert any("was not kept" in line for line in err), err
    assert served.root.http.get("/api/applications/").get_json() == []
    assert served.root.clusters.deployed == []


def test_dry_run_shows_the_training_placement_or_the_field_it_fails_on(
        served: Served, capsys: pytest.CaptureFixture[str]) -> None:
    register_trainable(served.root)
    served.root.register_cluster("c1", "http://c1:1")
    served.root.clusters.plans["http://c1:1"] = _placement()
    code, out, err = served.cli(capsys, "apply", "--dry-run", served.sla_file(training_sla("tiny:1")))
    assert code == 0, (out, err)
    assert "fl/fl: training schedulable on c1 (federated fedavg, 3 rounds, min_clients 2" in out, out
    assert "server:   n1" in out and "clients:  n1, n2 (2 clients)" in out, out
    assert "rejected n3: battery: battery 10% below the SLA's minimum 30%" in out, out
    why = "training.data: no node carries label data:digitz; labels seen: data:digits"
    served.root.clusters.plans["http://c1:1"] = _placement(why, "training.data")
    code, out, err = served.cli(capsys, "apply", "--dry-run",
                                served.sla_file(training_sla("tiny:1", data="data:digitz")))
    assert code == 1 and "training NOT schedulable on c1" in out and f"not schedulable: {why}" in out, out
    assert served.root.http.get("/api/applications/").get_json() == []


def _rounds(ts: float = 100.0) -> list[dict[str, Any]]:
    return [{"ts": ts + r, "kind": "training_round", "cause": "training", "round": r,
             "accuracy": 0.1 + 0.3 * r, "loss": 2.0 - 0.5 * r, "clients": 2, "message": f"round {r}/3"}
            for r in range(3)]


def _explanation() -> dict[str, Any]:
    return {"server": "id1", "clients": ["id1", "id2"], "unschedulable": "", "field": "",
            "rejected": [{"node_id": "id3", "reason": "battery", "message": "battery 10% below 30%"}]}


def _deployed(served: Served) -> tuple[str, str]:
    register_trainable(served.root)
    cluster_id = served.root.register_cluster("c1", "http://c1:1")
    service_id = served.root.submit(training_sla("tiny:1"))
    assert served.root.http.post(f"/api/service/{service_id}/instance").status_code == 200
    return cluster_id, service_id


def test_describe_shows_placement_rounds_and_the_registered_result(
        served: Served, capsys: pytest.CaptureFixture[str]) -> None:
    cluster_id, service_id = _deployed(served)
    registered = {"ts": 110.0, "kind": "training_registered", "cause": "training",
                  "message": "registered as tiny:2", "model": "tiny:2"}
    served.push(cluster_id, service_id, "DELETED", "training done: registered tiny:2", _explanation(),
                [*_rounds(), registered])
    code, out, err = served.cli(capsys, "describe", "service", service_id)
    assert code == 0, (out, err)
    assert "server:   id1" in out and "clients:  id1, id2 (2 clients)" in out, out
    assert "rejected id3: battery: battery 10% below 30%" in out, out
    assert "training_round  training  (round 2, accuracy 0.700, loss 1.000, 2 client(s))" in out, out
    assert "(round 0 (starting model), accuracy 0.100, loss 2.000)" in out, out
    assert "training_registered  training  (registered as tiny:2)" in out, out
    assert "Result:       tiny:2 (registered)" in out and "(none)" not in out, out


def test_watch_follows_rounds_to_the_result_or_fails_with_the_reason(
        served: Served, capsys: pytest.CaptureFixture[str]) -> None:
    cluster_id, service_id = _deployed(served)
    served.push(cluster_id, service_id, "RUNNING", "training: round 2/3", _explanation(), _rounds())

    def finish() -> None:  # the cluster's last push, once the CLI follows the events
        assert served.events_asked.wait(30)
        served.push(cluster_id, service_id, "DELETED", "training done: registered tiny:2", None,
                    [{"ts": 120.0, "kind": "training_registered", "cause": "training", "model": "tiny:2"}])

    served.events_asked.clear()
    pusher = threading.Thread(target=finish)
    pusher.start()
    code, out, err = served.cli(capsys, "training", "watch", service_id, "--timeout", "60")
    pusher.join()
    assert code == 0, (out, err)
    assert [line for line in out.splitlines() if line.startswith("round ")] == [  # once, on stdout
        "round 0 (starting model): accuracy 0.100, loss 2.000",
        "round 1/3: accuracy 0.400, loss 1.500, 2 clients",
        "round 2/3: accuracy 0.700, loss 1.000, 2 clients"], out
    assert not [line for line in err if line.startswith("round ")], err
    assert "fl (" in out and "trained: registered tiny:2" in out, out

    served.push(cluster_id, service_id, "FAILED",
                "not scheduled: 1 node(s) with data:digits pass the filters; training.min_clients is 2")
    code, out, err = served.cli(capsys, "training", "watch", "fl")
    assert code == 1, (out, err)
    assert err[-1].startswith("error: training fl failed: not scheduled: 1 node(s) with data:digits pass "
                              "the filters; training.min_clients is 2; see `treeline describe service"), err
    code, out, err = served.cli(capsys, "describe", "service", "fl")
    assert code == 0 and "Status:       FAILED - not scheduled: 1 node(s) with data:digits" in out, (out, err)


def test_apply_wait_follows_a_training_service_until_its_result(
        served: Served, capsys: pytest.CaptureFixture[str]) -> None:
    register_trainable(served.root)
    cluster_id = served.root.register_cluster("c1", "http://c1:1")

    def cluster() -> None:  # answers the deployment as a cluster would, once the CLI follows it
        assert served.events_asked.wait(30)
        [(_, service_id, _, _)] = served.root.clusters.deployed
        registered = {"ts": 120.0, "kind": "training_registered", "cause": "training", "model": "tiny:2"}
        served.push(cluster_id, service_id, "DELETED", "training done: registered tiny:2", _explanation(),
                    [*_rounds(), registered])

    pusher = threading.Thread(target=cluster)
    pusher.start()
    sla = served.sla_file(training_sla("tiny:1"))
    code, out, err = served.cli(capsys, "apply", "--wait", "--timeout", "60", sla)
    pusher.join()
    assert code == 0, (out, err)
    assert out.count("round 2/3: accuracy 0.700, loss 1.000, 2 clients") == 1, out
    assert not [line for line in err if line.startswith("round ")], err
    assert "trained: registered tiny:2" in out, out


class _Script:
    """A root client that answers a scripted sequence of service documents (and every round so far)."""

    def __init__(self, statuses: list[str]) -> None:
        self.statuses = statuses
        self.calls = 0

    def service(self, service_id: str) -> dict[str, Any]:
        self.calls += 1
        status = self.statuses[min(self.calls, len(self.statuses)) - 1]
        return {"service_id": service_id, "microservice_name": "fl", "status": status,
                "virtualization": "ml-training", "microservice": {"training": {"rounds": 2}}}

    def service_events(self, service_id: str) -> list[dict[str, Any]]:
        return [dict(e, instance=0) for e in _rounds()[:self.calls]]


def test_on_a_terminal_the_rounds_are_a_rich_progress_bar() -> None:
    console = Console(file=io.StringIO(), force_terminal=True, width=120, color_system=None)
    script = _Script(["DEPLOYING", "RUNNING", "DELETED"])
    doc = watch_training(script, {"service_id": "s1"}, console,  # type: ignore[arg-type]
                         interval=0.0, sleep=lambda _s: None)
    assert doc["status"] == "DELETED" and script.calls == 3
    drawn = console.file.getvalue()  # type: ignore[attr-defined]
    assert "fl ━" in drawn and "2/2" in drawn and "acc 0.700 loss 1.000 2 cl" in drawn, drawn
    with pytest.raises(Failure, match="still RUNNING after 5 s"):
        now = iter(range(0, 100, 10))
        watch_training(_Script(["RUNNING"]), {"service_id": "s1"}, console,  # type: ignore[arg-type]
                       timeout=5, clock=lambda: float(next(now)), sleep=lambda _s: None)


def test_apply_of_a_hierarchy_fewer_clusters_can_train_names_min_clusters_and_is_undone(
        served: Served, capsys: pytest.CaptureFixture[str]) -> None:
    served.root.register_cluster("c1", "http://c1:1")
    served.root.clusters.plans["http://c1:1"] = {"schedulable": True, "message": "",
                                                 "training": {"clients": ["n1", "n2"]}}
    register_trainable(served.root)
    sla = training_sla("tiny:1")
    sla["applications"][0]["microservices"][0]["training"]["hierarchical"] = {"min_clusters": 3}
    code, out, err = served.cli(capsys, "apply", served.sla_file(sla))
    assert code == 1, (out, err)
    first = next(line for line in err if line.startswith("error: "))
    assert first == (f"error: {PATH}.training.hierarchical.min_clusters: "
                     "1 cluster(s) can train data:digits; min_clusters is 3"), err  # once, at the field
    assert any("was not kept" in line for line in err), err
    assert served.root.http.get("/api/applications/").get_json() == []  # nothing half-made
    assert served.root.clusters.deployed == []


def test_dry_run_of_a_hierarchy_too_few_clusters_can_train_says_why(
        served: Served, capsys: pytest.CaptureFixture[str]) -> None:
    served.root.register_cluster("c1", "http://c1:1")
    served.root.clusters.plans["http://c1:1"] = {"schedulable": True, "message": "",
                                                 "training": {"server": "n1", "clients": ["n1", "n2"]}}
    register_trainable(served.root)
    sla = training_sla("tiny:1")
    sla["applications"][0]["microservices"][0]["training"]["hierarchical"] = {"min_clusters": 3}
    code, out, err = served.cli(capsys, "apply", "--dry-run", served.sla_file(sla))
    assert code == 1, (out, err)
    why = "  not schedulable: training.hierarchical.min_clusters: 1 cluster(s) can train data:digits; " \
          "min_clusters is 3"
    assert "training NOT schedulable" in out and why in out, out
    assert "server:" not in out, out  # no placement drawn under NOT schedulable
    assert served.root.http.get("/api/applications/").get_json() == []
