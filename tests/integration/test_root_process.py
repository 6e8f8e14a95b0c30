"""The root as a real process: serves on loopback, stops cleanly on SIGTERM, keeps its data across
restarts, and names each process in its health answer; its security modes (development's
Admin/Admin, production's first admin made with ``treeline admin create``, pre-seeded cluster
tokens)."""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests
from onnx import TensorProto, helper

from deployment_descriptors import example_path
from treeline_common.netutil import free_port, poll_until

pytestmark = pytest.mark.integration


def tiny_onnx() -> bytes:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "tiny", [x], [y])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


@contextmanager
def root_process(data_dir: Path, *extra: str) -> Iterator[str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([sys.executable, "-m", "root_orchestrator", "--host", "127.0.0.1",
                             "--port", str(port), "--data-dir", str(data_dir), "--log-level", "WARNING",
                             *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        def healthy() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"root exited: {proc.stderr.read().decode() if proc.stderr else ''}")
            return requests.get(f"{url}/api/health", timeout=1).json().get("status") == "ok"

        poll_until(healthy, timeout=30, what="root health")
        yield url
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        out, _err = proc.communicate(timeout=15)
        assert proc.returncode == 0
        assert out == b""  # logs go to stderr; nothing is printed


def login(url: str, username: str = "Admin", password: str = "Admin") -> requests.Session:
    """A session sending the bearer token of ``username``."""
    r = requests.post(f"{url}/api/auth/login", json={"username": username, "password": password}, timeout=10)
    assert r.status_code == 200, r.text
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {r.json()['token']}"
    return session


def test_root_process_persists_across_restart(tmp_path: Path) -> None:
    data = tiny_onnx()
    with root_process(tmp_path) as url:
        assert requests.get(f"{url}/api/applications/", timeout=10).status_code == 401
        http = login(url)  # development mode: Oakestra's default account
        first_id = requests.get(f"{url}/api/health", timeout=10).json()["instance_id"]
        sla = json.loads(example_path("mobilenet_v2_single").read_text())
        applied = [http.post(f"{url}/api/apply", json=sla, timeout=10).json()["applications"][0]
                   for _ in range(2)]
        assert [a["action"] for a in applied] == ["created", "unchanged"]
        r = http.post(f"{url}/api/models/tiny/versions?alias=prod", data=data,
                          headers={"Content-Type": "application/octet-stream"}, timeout=10)
        assert r.status_code == 201, r.text
        sha = r.json()["sha256"]
        sid = applied[0]["microservices"][0]
        bad = http.post(f"{url}/api/application/", data=b"{",
                            headers={"Content-Type": "application/json"}, timeout=10)
        assert bad.status_code == 400 and bad.json()["error"]["code"] == "INVALID_INPUT"
    assert (tmp_path / "mongo" / "db" / "treeline.db").is_file()  # its own embedded MongoDB, run alone
    with root_process(tmp_path) as url:
        http = login(url)
        health = requests.get(f"{url}/api/health", timeout=10).json()
        assert health["name"] == "root" and health["instance_id"] != first_id  # a new process, a new id
        assert http.get(f"{url}/api/models/tiny/versions/prod", timeout=10).json()["sha256"] == sha
        body = http.get(f"{url}/api/artifacts/{sha}", timeout=10).content
        assert hashlib.sha256(body).hexdigest() == sha
        assert http.get(f"{url}/api/service/{sid}", timeout=10).json()["status"] == "REQUESTED"
        again = http.post(f"{url}/api/apply", json=sla, timeout=10).json()["applications"][0]
        assert (again["action"], again["microservices"]) == ("unchanged", [sid])  # idempotent across restarts


def test_production_root_has_no_default_account_until_an_admin_is_created(tmp_path: Path) -> None:
    token = "stack-cluster-token-0123456789"
    register = {"cluster_name": "c1", "url": "http://127.0.0.1:1"}
    with root_process(tmp_path, "--production", "--cluster-token", token) as url:
        # production runs under waitress (its Server header is ours), not werkzeug's development server
        assert requests.get(f"{url}/api/health", timeout=10).headers.get("Server") == "treeline"
        refused = requests.post(f"{url}/api/auth/login", json={"username": "Admin", "password": "Admin"},
                                timeout=10)
        assert refused.status_code == 401 and refused.json()["error"]["code"] == "UNAUTHORIZED"
        anonymous = requests.post(f"{url}/api/clusters/register", json=register, timeout=10)
        assert anonymous.status_code == 401  # no development fallback in production
        seeded = requests.post(f"{url}/api/clusters/register", json=register, timeout=10,
                               headers={"Authorization": f"Bearer {token}"})
        assert seeded.status_code == 201, seeded.text
        made = subprocess.run([sys.executable, "-m", "treeline_cli", "admin", "create", "--username", "ops",
                               "--password-stdin", "--root-data-dir", str(tmp_path), "-o", "json"],
                              input="a-long-password\n", capture_output=True, text=True, timeout=60)
        assert made.returncode == 0, made.stderr
        assert json.loads(made.stdout)["roles"] == ["admin"]
        http = login(url, "ops", "a-long-password")  # the running root sees the new account at once
        assert http.get(f"{url}/api/users/", timeout=10).json()[0]["username"] == "ops"
        again = subprocess.run([sys.executable, "-m", "treeline_cli", "admin", "create", "--username", "ops",
                                "--password-stdin", "--root-data-dir", str(tmp_path)],
                               input="another-password\n", capture_output=True, text=True, timeout=60)
        assert again.returncode == 1 and "exists" in again.stderr
    assert (tmp_path / "jwt_secret").is_file()
