"""The root as a real process: serves on loopback, stops cleanly on SIGTERM, keeps its data across
restarts, and names each process in its health answer."""

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
def root_process(data_dir: Path) -> Iterator[str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([sys.executable, "-m", "root_orchestrator", "--host", "127.0.0.1",
                             "--port", str(port), "--data-dir", str(data_dir), "--log-level", "WARNING"],
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


def test_root_process_persists_across_restart(tmp_path: Path) -> None:
    data = tiny_onnx()
    with root_process(tmp_path) as url:
        first_id = requests.get(f"{url}/api/health", timeout=10).json()["instance_id"]
        sla = json.loads(example_path("mobilenet_v2_single").read_text())
        applied = [requests.post(f"{url}/api/apply", json=sla, timeout=10).json()["applications"][0]
                   for _ in range(2)]
        assert [a["action"] for a in applied] == ["created", "unchanged"]
        r = requests.post(f"{url}/api/models/tiny/versions?alias=prod", data=data,
                          headers={"Content-Type": "application/octet-stream"}, timeout=10)
        assert r.status_code == 201, r.text
        sha = r.json()["sha256"]
        sid = applied[0]["microservices"][0]
        bad = requests.post(f"{url}/api/application/", data=b"{",
                            headers={"Content-Type": "application/json"}, timeout=10)
        assert bad.status_code == 400 and bad.json()["error"]["code"] == "INVALID_INPUT"
    assert (tmp_path / "root" / "root.db").is_file()
    with root_process(tmp_path) as url:
        health = requests.get(f"{url}/api/health", timeout=10).json()
        assert health["name"] == "root" and health["instance_id"] != first_id  # a new process, a new id
        assert requests.get(f"{url}/api/models/tiny/versions/prod", timeout=10).json()["sha256"] == sha
        body = requests.get(f"{url}/api/artifacts/{sha}", timeout=10).content
        assert hashlib.sha256(body).hexdigest() == sha
        assert requests.get(f"{url}/api/service/{sid}", timeout=10).json()["status"] == "REQUESTED"
        again = requests.post(f"{url}/api/apply", json=sla, timeout=10).json()["applications"][0]
        assert (again["action"], again["microservices"]) == ("unchanged", [sid])  # idempotent across restarts
