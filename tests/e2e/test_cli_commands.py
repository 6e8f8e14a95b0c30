"""The ``treeline`` commands as an operator runs them (``python -m treeline_cli ...`` as processes)
against one real stack per module: broker, root, cluster and two node engines on free ports,
with a tiny ONNX model registered from bytes.

Checked: exit codes (0, 1 for failures, 2 for usage errors), ``-o json`` stdout parses as JSON,
each error is exactly one line on stderr, applying the same file twice stores one application,
``infer`` picks the RUNNING application of a name, an unschedulable deployment lists each
reason once with its nodes.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from treeline_test_helpers import tiny_mlp

from treeline_cli.root_client import DeploymentFailed, RootClient, login
from treeline_cli.stack import Stack, StackConfig, pick_ports, start_stack
from treeline_common.netutil import free_port

pytestmark = pytest.mark.integration

INPUT = "input"
# a step slower than treeline_cli.output.SLOW_STEP_S (1 s) prints "<step> ..." and "<step>: done in N s"
# on stderr when stderr is no terminal: how long a step takes depends on the machine's load, not on
# the command, so the errors checked below are the other lines
PROGRESS = re.compile(r"^(?!error: )\S.*( \.\.\.|: done in \d+\.\d s)$")


def tiny_model() -> bytes:
    return tiny_mlp(0, INPUT)


def sla(app: str, constraints: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    model = {"name": "tiny", "version": "latest",
             "input": {"name": INPUT, "shape": [1, 8], "dtype": "float32"},
             "objective": "latency", "max_partitions": 2, "variants": ["fp32"], "accuracy_floor": 0.0}
    service = {"microserviceID": "", "microservice_name": "classifier", "microservice_namespace": "cli",
               "virtualization": "ml-model", "memory": 64, "vcpus": 1, "vgpus": 0, "vtpus": 0,
               "bandwidth_in": 0, "bandwidth_out": 0, "storage": 0, "state": "", "added_files": [],
               "model": model, "constraints": constraints or [], "connectivity": []}
    return {"sla_version": "v2.0", "customerID": "Admin",
            "applications": [{"applicationID": "", "application_name": app, "application_namespace": "cli",
                              "application_desc": "CLI e2e", "microservices": [service]}]}


UNSCHEDULABLE = [{"type": "battery", "min_percent": 99}, {"type": "e2e_latency", "threshold_ms": 0.0001}]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    config = pick_ports(StackConfig(data_dir=tmp_path_factory.mktemp("stack"), nodes=2,
                                    profiles=("server", "rpi4"), telemetry_interval=1.0, node_threads=1,
                                    node_labels={}))
    running = start_stack(config)
    try:
        running.wait_ready(timeout=60)
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("files")
    paths = {"model": folder / "tiny.onnx", "sla": folder / "vision.json", "bad": folder / "strict.json",
             "not_json": folder / "broken.json"}
    paths["model"].write_bytes(tiny_model())
    paths["sla"].write_text(json.dumps(sla("vision")))
    paths["bad"].write_text(json.dumps(sla("strict", UNSCHEDULABLE)))
    paths["not_json"].write_text("{ not json")
    return paths


@pytest.fixture(scope="module")
def cli(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Any:
    cwd = tmp_path_factory.mktemp("cwd")  # no treeline.toml here
    env = {k: v for k, v in os.environ.items() if not k.startswith("TREELINE_")}
    env.update(TREELINE_ROOT_URL=stack.root_url, TREELINE_DATA_DIR=str(stack.config.data_dir))

    def run(*argv: str, timeout: float = 60) -> tuple[int, str, list[str]]:
        done = subprocess.run([sys.executable, "-m", "treeline_cli", *argv], cwd=cwd, env=env,
                              capture_output=True, text=True, timeout=timeout)
        errors = [line for line in done.stderr.splitlines() if not PROGRESS.match(line)]
        return done.returncode, done.stdout, errors
    return run


@pytest.fixture(scope="module")
def deployed(cli: Any, files: dict[str, Path]) -> dict[str, Any]:
    code, out, err = cli("model", "register", str(files["model"]), "--name", "tiny", "-o", "json")
    assert code == 0, err
    assert json.loads(out)["version"] == 1
    code, out, err = cli("deploy", str(files["sla"]), "-o", "json")
    assert code == 0, err
    return dict(json.loads(out))


def test_deploy_then_apply_again_keeps_one_application(cli: Any, files: dict[str, Path],
                                                       deployed: dict[str, Any]) -> None:
    assert [s["status"] for s in deployed["services"]] == ["RUNNING"]
    code, out, err = cli("apply", str(files["sla"]), "-o", "json")
    assert code == 0, err
    assert [a["action"] for a in json.loads(out)["applications"]] == ["unchanged"]
    code, out, _ = cli("get", "apps", "-o", "json")
    assert code == 0
    assert [a["application_name"] for a in json.loads(out)].count("vision") == 1


def test_get_and_describe_print_json_on_stdout(cli: Any, deployed: dict[str, Any]) -> None:
    service_id = deployed["services"][0]["service_id"]
    expected = {"nodes": 2, "clusters": 1, "models": 1}
    for kind in ("nodes", "clusters", "apps", "services", "deployments", "models", "events"):
        code, out, err = cli("get", kind, "-o", "json")
        assert code == 0 and err == [], (kind, err)
        rows = json.loads(out)
        assert isinstance(rows, list)
        if kind in expected:
            assert len(rows) == expected[kind], (kind, rows)
    code, out, _ = cli("describe", "service", service_id, "-o", "json")
    assert code == 0 and json.loads(out)["status"] == "RUNNING"
    code, out, _ = cli("describe", "service", service_id)
    assert code == 0 and "Placement:" in out and "History:" in out and "deployed" in out
    code, out, _ = cli("get", "nodes")
    assert code == 0 and "server-1" in out and "rpi4-1" in out


def test_infer_picks_the_running_application_and_names_missing_services(
        cli: Any, stack: Stack, deployed: dict[str, Any]) -> None:
    admin = RootClient(stack.root_url)
    # a second "vision" that FAILS, by another user (one user cannot have two: 409); admin sees both
    admin.call("POST", "/api/users/", json={"username": "bob", "password": "bob-password-1",
                                            "roles": ["application_provider"]})
    root = RootClient(stack.root_url, token=login(stack.root_url, "bob", "bob-password-1")["token"])
    root.register_model("tiny-bob", tiny_model())  # models are owned: bob cannot use admin's "tiny"
    bobs = sla("vision", UNSCHEDULABLE)
    bobs["applications"][0]["microservices"][0]["model"]["name"] = "tiny-bob"
    [failed_app] = root.submit_sla(bobs)
    root.deploy_service(failed_app["microservices"][0])
    with pytest.raises(DeploymentFailed):
        root.wait_deployed(failed_app["microservices"][0], timeout=30, interval=0.1)
    code, out, err = cli("infer", "vision", "--n", "5", "-o", "json")
    assert code == 0, err
    report = json.loads(out)
    assert report["service_id"] == deployed["services"][0]["service_id"] and report["requests"] == 5
    code, out, err = cli("infer", "vision", "--service", "nope")
    assert (code, out) == (1, "")
    assert err == ["error: there is no service 'nope' in application 'vision' (it has: classifier); "
                   "pass one of those with --service"]


@pytest.mark.parametrize(("argv", "code", "needle"), [
    (("up", "--nodes", "0"), 2, "nodes: must be at least 1"),
    (("up", "--profiles", "server,gpu9000"), 2, "unknown profile 'gpu9000'"),
    (("infer", "vision", "--n", "0"), 2, "'--n'"),
    (("infer", "vision", "--in-flight", "0"), 2, "'--in-flight'"),
    (("apply", "no-such-file.json"), 2, "no such file"),
    (("apply", "{not_json}"), 2, "is not JSON"),
    (("get", "apps", "--root-url", "{dead_root}"), 1, "cannot reach the root"),
    (("describe", "service", "nope"), 1, "no service 'nope'"),
    (("frobnicate",), 2, "No such command"),
])
def test_each_error_is_one_line_with_its_exit_code(cli: Any, files: dict[str, Path], argv: tuple[str, ...],
                                                   code: int, needle: str) -> None:
    values = {"not_json": str(files["not_json"]), "dead_root": f"http://127.0.0.1:{free_port()}"}
    got, out, err = cli(*(a.format(**values) for a in argv))
    assert got == code, err
    assert len(err) == 1 and err[0].startswith("error: ") and needle in err[0], err
    assert out == ""


def test_unschedulable_deploy_lists_each_reason_once(cli: Any, files: dict[str, Path]) -> None:
    code, out, err = cli("deploy", str(files["bad"]))
    assert (code, out) == (1, ""), err
    assert "error: service classifier" in err[0] and "cannot be scheduled" in err[0], err
    reasons = err[1:]
    assert reasons and len(reasons) == len(set(reasons))
    assert any("all nodes" in line or "server-1" in line for line in reasons), reasons
    assert any("rpi4-1" in line and "battery" in line for line in reasons), reasons
    code, _, err = cli("delete", "app", "strict")
    assert code == 0, err
    code, _, err = cli("get", "apps", "strict")
    assert code == 1 and len(err) == 1


def test_logs_config_and_version(cli: Any, deployed: dict[str, Any]) -> None:
    code, out, err = cli("logs", "cluster", "--tail", "3")
    assert code == 0 and len(out.splitlines()) == 3, err
    code, _, err = cli("logs", "nothing-like-this")
    assert code == 1 and len(err) == 1 and "root" in err[0]
    code, out, _ = cli("config", "show", "-o", "json", "--nodes", "4")
    settings = json.loads(out)["settings"]
    assert settings["nodes"] == {"value": 4, "source": "flag --nodes"}
    assert settings["root_url"]["source"] == "env TREELINE_ROOT_URL"
    assert cli("--version")[1].startswith("treeline ")
    assert json.loads(cli("version", "-o", "json")[1])["treeline"]


def test_model_profile_remeasures_one_device_class(cli: Any, deployed: dict[str, Any]) -> None:
    code, out, err = cli("model", "profile", "tiny:1", "--device-class", "server", "--timeout", "30", "-o",
                         "json")
    assert code == 0, err
    assert set(json.loads(out)["profiles"]) == {"server"}


def test_dry_run_plans_without_creating_anything(cli: Any, files: dict[str, Path],
                                                 deployed: dict[str, Any]) -> None:
    before = declared(json.loads(cli("get", "apps", "-o", "json")[1]))
    code, out, err = cli("apply", str(files["bad"]), "--dry-run", "-o", "json")
    assert code == 1, err  # the plan is printed; a service that cannot be scheduled makes it exit 1
    [plan] = json.loads(out)["services"]
    assert plan["microservice_name"] == "classifier" and plan["schedulable"] is False
    code, out, _ = cli("apply", str(files["sla"]), "--dry-run")
    assert code == 0 and "schedulable on cluster-1, " in out
    assert declared(json.loads(cli("get", "apps", "-o", "json")[1])) == before


# what an apply writes into a service document (root_orchestrator.apply.desired_fields) and its id;
# the rest (status, instances, placement, revision) is observed state the cluster's pushes update
DESIRED_FIELDS = ("_id", "microservice_name", "microservice_namespace", "virtualization", "microservice",
                  "model")


def declared(apps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``get apps -o json`` without the services' observed state: everything an apply could change."""
    assert apps and all(app.get("services") for app in apps), apps
    return [{**app, "services": [{k: svc.get(k) for k in DESIRED_FIELDS} for svc in app["services"]]}
            for app in apps]
