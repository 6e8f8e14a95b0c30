"""The ``treeline`` command's contract for errors and output, against a fake root on a loopback port.

Every user error is one line on stderr and exit 2 (usage) or 1 (failure), never a traceback
unless -v; ``-o json`` puts exactly one JSON document on stdout; nothing starts when a setting
is refused; an unschedulable deployment prints each reason once with its nodes.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask, jsonify
from werkzeug.serving import make_server

from treeline_cli import main as cli_main
from treeline_cli.commands import stack as stack_commands
from treeline_common.netutil import free_port

RUNNING = {"service_id": "s-run", "application_id": "a-run", "microservice_name": "classifier",
           "status": "RUNNING", "status_detail": "all stages ready", "instances": [{"instance": 0}],
           "model": {"name": "tiny", "resolved": {"name": "tiny", "version": 1}},
           "placement": {"deployment_id": "s-run-0", "generation": 1, "strategy": "optimal",
                         "input": {"name": "input", "shape": [1, 4], "dtype": "float32"},
                         "entry": {"endpoint": "tcp://127.0.0.1:1", "stage_key": "s-run-0/1/0"},
                         "predicted": {"latency_ms": 1.5},
                         "stages": [{"index": 0, "node_id": "node-a", "node_name": "server-1", "cut_bytes": 0,
                                     "predicted_compute_ms": 1.5, "state": "READY"}]},
           "explanation": {"filtered": {}, "node_names": {"node-b": "rpi4-1"},
                           "filtered_or_unused": {"node-b": "not_selected: the plan does not need it"}}}
FAILED = {"service_id": "s-bad", "application_id": "a-bad", "microservice_name": "classifier",
          "status": "FAILED", "instances": [{"instance": 0, "status": "FAILED"}], "placement": None,
          "status_detail": "unschedulable: *: best predicted latency 1.5 ms exceeds the SLA's 0.1 ms; "
                           "node-b: battery: battery 20% below the SLA's minimum 99%; "
                           "node-c: battery: battery 20% below the SLA's minimum 99%; "
                           "node-a: sla_latency: best predicted latency 1.5 ms exceeds the SLA's 0.1 ms",
          "explanation": {"filtered": {"node-b": {"code": "battery", "message": "battery 20% below the SLA's "
                                                                                "minimum 99%"},
                                       "node-c": {"code": "battery", "message": "battery 20% below the SLA's "
                                                                                "minimum 99%"}}}}
APPS = [{"applicationID": "a-run", "application_name": "vision", "microservices": ["s-run"]},
        {"applicationID": "a-bad", "application_name": "vision", "microservices": ["s-bad"]}]
NODES = [{"node_id": "node-a", "name": "server-1", "online": True, "profile": "server"},
         {"node_id": "node-b", "name": "rpi4-1", "online": True, "profile": "rpi4"},
         {"node_id": "node-c", "name": "rpi4-2", "online": True, "profile": "rpi4"}]


def fake_root(url: str) -> Flask:
    app = Flask("fake-root")
    services = {s["service_id"]: s for s in (RUNNING, FAILED)}

    fixed = {
        "/api/health": {"status": "ok"},
        "/api/openapi.json": {"paths": {"/api/apply": {"post": {}}}},
        "/api/applications/": {"applications": APPS},
        "/api/services/": {"services": list(services.values())},
        "/api/clusters/": {"clusters": [{"cluster_id": "c1", "cluster_name": "cluster-1", "url": url,
                                         "active": True}]},
        "/api/nodes": {"nodes": NODES},
    }
    for path, body in fixed.items():
        app.add_url_rule(path, path, lambda body=body: jsonify(body))

    @app.get("/api/service/<sid>")
    def service(sid: str) -> Any:
        return jsonify(services[sid]) if sid in services else (
            jsonify({"error": {"code": "NOT_FOUND", "message": f"no service {sid}", "details": []}}), 404)

    @app.get("/api/service/<sid>/events")
    def events(sid: str) -> Any:
        return jsonify({"service_id": sid, "events": []})

    @app.post("/api/apply")
    def apply() -> Any:
        return jsonify({"applications": [{**APPS[1], "action": "unchanged", "changes": []}]})

    return app


@pytest.fixture(scope="module")
def root_url() -> Iterator[str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = make_server("127.0.0.1", port, fake_root(url), threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield url
    server.shutdown()


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, list[str]]:
    code = cli_main.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err.splitlines()


@pytest.fixture
def no_stack(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Record any attempt to start a stack (a refused setting must stop ``up`` before that)."""
    started: list[Any] = []
    monkeypatch.setattr(stack_commands, "start_stack", lambda config: started.append(config))
    return started


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("TREELINE_ROOT_URL", "TREELINE_NODES", "TREELINE_PROFILES", "TREELINE_CONFIG",
                 "FORCE_COLOR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)  # no stray ./treeline.toml


@pytest.mark.parametrize(("argv", "needle"), [
    ((), "missing command"),
    (("frobnicate",), "No such command 'frobnicate'"),
    (("up", "--nodes", "0"), "nodes: must be at least 1"),
    (("up", "--profiles", "server,gpu9000"), "unknown profile 'gpu9000'"),
    (("infer", "vision", "--n", "0"), "'--n': 0 is not in the range"),
    (("infer", "vision", "--in-flight", "0"), "'--in-flight': 0 is not in the range"),
    (("get", "apps", "-o", "xml"), "'xml' is not one of"),
    (("get", "pods"), "unknown kind 'pods'"),
    (("apply", "missing.json"), "no such file: missing.json"),
    (("deploy", "not_json.json"), "not_json.json is not JSON"),
    (("model", "register"), "give either an ONNX FILE or --builtin NAME"),
])
def test_usage_errors_are_one_line_and_exit_2(capsys: pytest.CaptureFixture[str], no_stack: list[Any],
                                              tmp_path: Path, argv: tuple[str, ...], needle: str) -> None:
    (tmp_path / "not_json.json").write_text("{applications: nope")
    code, out, err = run(capsys, *argv)
    assert code == 2, err
    assert len(err) == 1 and err[0].startswith("error: ") and needle in err[0], err
    assert out == ""
    assert not no_stack, "up started a stack although its settings were refused"


def test_verbose_is_accepted_after_any_command(capsys: pytest.CaptureFixture[str],
                                               no_stack: list[Any]) -> None:
    code, _, err = run(capsys, "up", "-v", "--nodes", "0")
    assert code == 2 and err[-1].startswith("error: invalid setting nodes") and not no_stack
    assert run(capsys, "version", "-v")[0] == 0


def test_unreachable_root_is_one_line_exit_1_and_v_adds_the_traceback(
        capsys: pytest.CaptureFixture[str]) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    code, out, err = run(capsys, "get", "apps", "--root-url", url)
    assert (code, out) == (1, "")
    assert err == [f"error: cannot reach the root at {url} (connection refused); is it running? "
                   "Start it with `treeline up`, or pass --root-url (or set TREELINE_ROOT_URL)"]
    code, _, err = run(capsys, "-v", "get", "apps", "--root-url", url)
    assert code == 1 and err[0] == "Traceback (most recent call last):" and err[-1].startswith("error: ")


def test_json_output_is_the_only_thing_on_stdout(capsys: pytest.CaptureFixture[str], root_url: str) -> None:
    for kind in ("apps", "services", "nodes", "deployments", "clusters"):
        code, out, err = run(capsys, "get", kind, "-o", "json", "--root-url", root_url)
        assert code == 0 and err == []
        assert isinstance(json.loads(out), list)
    code, out, _ = run(capsys, "--root-url", root_url, "describe", "service", "s-run", "--json")
    assert json.loads(out)["service_id"] == "s-run"


def test_table_output_has_no_colour_codes_off_a_terminal(capsys: pytest.CaptureFixture[str],
                                                          root_url: str) -> None:
    code, out, err = run(capsys, "get", "services", "--root-url", root_url)
    assert code == 0 and "\x1b[" not in out + "".join(err)
    assert out.splitlines()[0].split() == ["NAME", "APPLICATION", "STATUS", "MODEL", "STAGES", "PREDICTED_MS",
                                           "ID"]
    code, out, _ = run(capsys, "describe", "service", "s-run", "--root-url", root_url)
    assert "1 stage," in out and "1 stages" not in out
    assert "not used rpi4-1: not_selected" in out


def test_ambiguous_and_unknown_names_list_the_candidates(capsys: pytest.CaptureFixture[str],
                                                         root_url: str) -> None:
    code, _, err = run(capsys, "describe", "app", "vision", "--root-url", root_url)
    assert code == 2 and len(err) == 1
    assert "2 applications are named 'vision': a-run (RUNNING), a-bad (FAILED)" in err[0]
    code, _, err = run(capsys, "get", "services", "nope", "--root-url", root_url)
    assert code == 1
    assert err == ["error: no service 'nope' (there are: classifier); see `treeline get services`"]


def test_infer_says_which_services_an_application_has(capsys: pytest.CaptureFixture[str],
                                                      root_url: str) -> None:
    code, out, err = run(capsys, "infer", "vision", "--service", "nope", "--root-url", root_url)
    assert (code, out) == (1, "")
    assert err == ["error: there is no service 'nope' in application 'vision' (it has: classifier); "
                   "pass one of those with --service"]


def test_unschedulable_deployment_prints_each_reason_once_with_its_nodes(
        capsys: pytest.CaptureFixture[str], root_url: str, tmp_path: Path) -> None:
    sla = tmp_path / "sla.json"
    sla.write_text(json.dumps({"sla_version": "v2.0", "customerID": "Admin", "applications": []}))
    code, out, err = run(capsys, "deploy", str(sla), "--root-url", root_url)
    assert (code, out) == (1, "")
    assert err[0] == ("error: service classifier (s-bad) cannot be scheduled (2 reasons below); "
                      "see `treeline describe service s-bad`")
    assert sorted(err[1:]) == sorted([
        "  rpi4-1, rpi4-2: battery 20% below the SLA's minimum 99%",
        "  all nodes: best predicted latency 1.5 ms exceeds the SLA's 0.1 ms",
    ])
