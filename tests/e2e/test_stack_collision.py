"""Two stacks on one machine never collide: ``treeline up`` as an operator runs it, real processes.

One stack (``python -m treeline_cli up``: broker, root, cluster, two node engines) runs on free
ports with a tiny model deployed. Checked against it:

* a second ``treeline up`` on the same root or cluster port exits 1 within 2 s with ONE line on
  stderr naming the port, starts nothing, and the first stack's deployment stays RUNNING with
  its nodes online and answering;
* a node engine of another stack that takes the name of a live node of the first stack is
  refused by the first stack's cluster (409): it exits with that reason, the first node stays;
* the logs of a normal start hold no ANSI escape (even after requests werkzeug colours) and no
  WARNING or ERROR line except the one documented below;
* the stack stopped and started again on OTHER ports with the SAME data directory brings the
  deployment back RUNNING, and it answers inference (stored documents name no address of our
  own services: the cluster serves partitions from its cache, the model is named by digest).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
from treeline_test_helpers import fail_fast_bound_s, tiny_mlp

from treeline_cli.inference import run_requests, service_resolver
from treeline_cli.root_client import RootClient
from treeline_common.netutil import free_port, poll_until

pytestmark = pytest.mark.integration

INPUT = "input"
# The one WARNING a normal start of a development stack logs on purpose: the root creates the
# default Admin/Admin account and says so (root_orchestrator/auth/service.py).
EXPECTED_WARNINGS = (re.compile(r"WARNING root_orchestrator\.auth\.service: development mode: created the "
                                r"default account"),)


def tiny_model() -> bytes:
    return tiny_mlp(1, INPUT)


def sla(app: str) -> dict[str, Any]:
    model = {"name": "tiny", "version": "latest",
             "input": {"name": INPUT, "shape": [1, 8], "dtype": "float32"},
             "objective": "latency", "max_partitions": 2, "variants": ["fp32"], "accuracy_floor": 0.0,
             "privacy": {}}  # callers sign with the service's caller key, which must survive the restart
    service = {"microserviceID": "", "microservice_name": "classifier", "microservice_namespace": "twin",
               "virtualization": "ml-model", "memory": 64, "vcpus": 1, "vgpus": 0, "vtpus": 0,
               "bandwidth_in": 0, "bandwidth_out": 0, "storage": 0, "state": "", "added_files": [],
               "model": model, "constraints": [], "connectivity": []}
    return {"sla_version": "v2.0", "customerID": "Admin",
            "applications": [{"applicationID": "", "application_name": app, "application_namespace": "twin",
                              "application_desc": "two stacks", "microservices": [service]}]}


def clean_env() -> dict[str, str]:
    """This environment without TREELINE_* settings (they would override the flags' defaults)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("TREELINE_")}


@dataclass
class Up:
    """A running ``python -m treeline_cli up`` and what it printed."""

    process: subprocess.Popen[str]
    root_port: int
    cluster_port: int
    data_dir: Path
    output: list[str] = field(default_factory=list)
    ready: threading.Event = field(default_factory=threading.Event)
    ready_after_s: float = 0.0
    start_logs: dict[str, list[str]] = field(default_factory=dict)  # the logs when it said Ready.

    @property
    def root_url(self) -> str:
        return f"http://127.0.0.1:{self.root_port}"

    @property
    def cluster_url(self) -> str:
        return f"http://127.0.0.1:{self.cluster_port}"

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait(timeout=10)

    def online_nodes(self) -> set[str]:
        nodes = requests.get(f"{self.cluster_url}/api/nodes", timeout=5).json()["nodes"]
        return {n["name"] for n in nodes if n["online"]}


def treeline(*argv: str, cwd: Path, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "treeline_cli", *argv], cwd=cwd, env=clean_env(),
                          capture_output=True, text=True, timeout=timeout)


def start_up(data_dir: Path, cwd: Path, timeout: float = 90) -> Up:
    """``treeline up`` with two nodes on free ports; returns once it printed ``Ready.``."""
    root_port, cluster_port = free_port(), free_port()
    cmd = [sys.executable, "-m", "treeline_cli", "up", "--nodes", "2", "--profiles", "server,rpi4",
           "--threads", "1", "--data-dir", str(data_dir), "--root-port", str(root_port),
           "--cluster-port", str(cluster_port)]
    started = time.monotonic()
    process = subprocess.Popen(cmd, cwd=cwd, env=clean_env(), stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    up = Up(process, root_port, cluster_port, data_dir)

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            up.output.append(line)
            if line.startswith("Ready."):
                up.ready_after_s = time.monotonic() - started
                up.ready.set()

    threading.Thread(target=read, daemon=True).start()
    deadline = time.monotonic() + timeout
    while not up.ready.wait(0.1) and process.poll() is None and time.monotonic() < deadline:
        pass
    if not up.ready.is_set():
        up.stop()
        raise AssertionError("treeline up never became ready:\n" + "".join(up.output))
    up.start_logs = log_lines(data_dir)
    return up


def log_lines(data_dir: Path) -> dict[str, list[str]]:
    """Every log file of a stack (processes and broker), by name."""
    files = [*sorted((data_dir / "logs").glob("*.log")), *sorted((data_dir / "broker").glob("*.log"))]
    return {path.name: path.read_text(errors="replace").splitlines() for path in files}


@pytest.fixture(scope="module")
def cwd(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cwd")  # no treeline.toml here


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("first")


@pytest.fixture(scope="module")
def first(data_dir: Path, cwd: Path) -> Iterator[Up]:
    up = start_up(data_dir, cwd)
    try:
        yield up
    finally:
        up.stop()


@pytest.fixture(scope="module")
def deployed(first: Up) -> dict[str, Any]:
    root = RootClient(first.root_url)
    root.register_model("tiny", tiny_model())
    [app] = root.submit_sla(sla("twin"))
    service_id = app["microservices"][0]
    root.deploy_service(service_id)
    return root.wait_deployed(service_id, timeout=60, interval=0.1)


def answers(root_url: str, service: dict[str, Any], n: int = 5) -> int:
    """How many of ``n`` requests the service answered (following its placement through the root)."""
    report = run_requests(service["placement"], n, timeout=20,
                          resolver=service_resolver(root_url, str(service["service_id"])))
    return n - report.failed


def test_a_normal_start_logs_plain_lines_and_no_unexpected_warning(first: Up) -> None:
    # Execute: requests werkzeug colours (4xx) on both servers, after the logs of the start
    for url in (first.root_url, first.cluster_url):
        assert requests.get(f"{url}/api/no-such-route", timeout=5).status_code == 404
    assert requests.get(f"{first.root_url}/api/applications/", timeout=5).status_code == 401
    poll_until(lambda: "/api/no-such-route" in (first.data_dir / "logs" / "cluster.log").read_text(), 10)

    # Assert: no escape anywhere, no WARNING/ERROR at start but the documented one
    for name, lines in log_lines(first.data_dir).items():
        assert not [line for line in lines if "\x1b[" in line], f"ANSI escapes in {name}"
    unexpected = [f"{name}: {line}" for name, lines in first.start_logs.items() for line in lines
                  if re.search(r"\b(WARNING|ERROR|CRITICAL)\b", line)
                  and not any(p.search(line) for p in EXPECTED_WARNINGS)]
    assert unexpected == []
    assert {"root.log", "cluster.log", "node-server-1.log", "node-rpi4-1.log"} <= set(first.start_logs)


@pytest.mark.parametrize("busy", ["root", "cluster"])
def test_a_second_up_on_a_taken_port_fails_fast_and_the_first_stack_keeps_serving(
        first: Up, deployed: dict[str, Any], cwd: Path, tmp_path: Path, busy: str) -> None:
    # Prepare: one port of the first stack, the other one free
    port = first.root_port if busy == "root" else first.cluster_port
    ports = {"root": free_port(), "cluster": free_port(), busy: port}
    second_dir = tmp_path / "second"

    # Execute
    started = time.monotonic()
    done = treeline("up", "--nodes", "2", "--data-dir", str(second_dir), "--root-port", str(ports["root"]),
                    "--cluster-port", str(ports["cluster"]), cwd=cwd)
    elapsed = time.monotonic() - started

    # Assert: exit 1 within 2 s, one line naming the port and the setting to change, nothing started
    assert done.returncode == 1, done.stderr
    bound = fail_fast_bound_s()
    assert elapsed < bound, f"took {elapsed:.2f}s (bound {bound:.2f}s)"
    lines = done.stderr.splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"error: port {port} ({busy}) is already in use by a Treeline"), lines
    assert f"--{busy}-port" in lines[0]
    assert done.stdout == ""
    assert not second_dir.exists()
    # the first stack: same processes, deployment RUNNING, nodes online, requests answered
    service = RootClient(first.root_url).service(deployed["service_id"])
    assert service["status"] == "RUNNING"
    assert first.online_nodes() == {"server-1", "rpi4-1"}
    assert answers(first.root_url, service) == 5
    assert first.process.poll() is None


def test_a_node_taking_a_live_nodes_name_is_refused_and_the_first_node_stays(
        first: Up, deployed: dict[str, Any], tmp_path: Path) -> None:
    # Execute: another stack's node engine, pointed at the first stack's cluster, same name
    log = tmp_path / "intruder.log"
    with log.open("wb") as out:
        intruder = subprocess.Popen(
            [sys.executable, "-m", "node_engine", "--cluster-url", first.cluster_url, "--name", "server-1",
             "--profile", "server", "--data-dir", str(tmp_path / "intruder"), "--threads", "1"],
            env=clean_env(), stdout=out, stderr=subprocess.STDOUT)
        try:
            code = intruder.wait(timeout=60)  # the node retries a 409 for its 15 s grace first
        finally:
            if intruder.poll() is None:
                intruder.kill()
                intruder.wait(10)

    # Assert: it gave up with the cluster's reason; the first node is still the one online
    text = log.read_text()
    assert code != 0
    assert "rejected the registration" in text and "server-1" in text, text
    assert first.online_nodes() == {"server-1", "rpi4-1"}
    service = RootClient(first.root_url).service(deployed["service_id"])
    assert service["status"] == "RUNNING"
    assert answers(first.root_url, service) == 5


def test_restart_on_other_ports_with_the_same_data_dir_brings_the_deployment_back(
        first: Up, deployed: dict[str, Any], data_dir: Path, cwd: Path) -> None:
    # Prepare: the first stack stops cleanly
    assert first.stop() == 0

    # Execute: the same data directory, new ports
    again = start_up(data_dir, cwd)
    try:
        assert {again.root_port, again.cluster_port}.isdisjoint({first.root_port, first.cluster_port})
        root = RootClient(again.root_url)
        service = root.wait_deployed(deployed["service_id"], timeout=60, interval=0.2)

        # Assert: RUNNING again, answering, and no stored document names the old ports
        assert service["status"] == "RUNNING"
        assert answers(again.root_url, service) == 5
        stored = str(root.service(deployed["service_id"]))
        for old in (first.root_port, first.cluster_port):
            assert not re.search(rf":{old}(?!\d)", stored), f"port {old} of the stopped stack in {stored}"
    finally:
        assert again.stop() == 0
