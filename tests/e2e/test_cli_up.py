"""``treeline up`` starts every part as its own process and SIGTERM stops all of them."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
import requests
from treeline_test_helpers import fail_fast_bound_s

from treeline_common.netutil import free_port

pytestmark = pytest.mark.integration


def test_up_starts_everything_and_sigterm_leaves_no_orphan(tmp_path: Path) -> None:
    # Prepare
    root_port, cluster_port = free_port(), free_port()
    cmd = [sys.executable, "-m", "treeline_cli", "up", "--nodes", "2", "--data-dir", str(tmp_path),
           "--root-port", str(root_port), "--cluster-port", str(cluster_port)]
    # its own process group, as a shell gives a foreground job: Ctrl-C signals the whole group
    up = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          start_new_session=True)
    output: list[str] = []
    ready = threading.Event()

    def read_output() -> None:
        assert up.stdout is not None
        for line in up.stdout:
            output.append(line)
            if line.startswith("Ready."):
                ready.set()

    threading.Thread(target=read_output, daemon=True).start()
    try:
        # Execute: wait until `up` says it is ready, then check the nodes at the cluster
        assert ready.wait(90), "treeline up never became ready:\n" + "".join(output)
        nodes = requests.get(f"http://127.0.0.1:{cluster_port}/api/nodes", timeout=5).json()["nodes"]
        assert sum(1 for n in nodes if n["online"]) == 2
        # a later command with the same data dir finds the stack on its ports (no port given)
        env = {k: v for k, v in os.environ.items() if not k.startswith("TREELINE_")}
        env["TREELINE_DATA_DIR"] = str(tmp_path)
        found = subprocess.run([sys.executable, "-m", "treeline_cli", "get", "nodes", "-o", "json"], env=env,
                               capture_output=True, text=True, timeout=60)
        assert found.returncode == 0, found.stderr
        listed = json.loads(found.stdout)
        assert len(listed if isinstance(listed, list) else listed["nodes"]) == 2
        children = psutil.Process(up.pid).children(recursive=True)
        # broker + root + cluster + 2 nodes, each a separate process
        assert len(children) >= 5
        os.killpg(up.pid, signal.SIGINT)  # a terminal's Ctrl-C: every process of the group
        started = time.monotonic()
        assert up.wait(timeout=30) in (0, 130)
        stopped_s = time.monotonic() - started
    finally:
        if up.poll() is None:
            up.kill()

    # Assert: no child outlived it, and they stopped in order (none waited out the stop timeout:
    # the store used to die first on Ctrl-C and the cluster hung on it for 8 s)
    _gone, alive = psutil.wait_procs(children, timeout=10)
    assert not alive, f"orphans left: {[p.pid for p in alive]}"
    assert not any("did not stop" in line for line in output), "".join(output)
    assert stopped_s < 8.0, f"stopping took {stopped_s:.1f} s"


def _up(tmp_path: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TREELINE_")}
    return subprocess.run([sys.executable, "-m", "treeline_cli", "up", "--data-dir", str(tmp_path / "state"),
                           *argv], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=30)


def test_up_refuses_a_port_any_process_holds_before_starting_anything(tmp_path: Path) -> None:
    # Prepare: a plain listening socket (not Treeline) on the broker port we ask for
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]

        # Execute
        started = time.monotonic()
        done = _up(tmp_path, "--root-port", str(free_port()), "--cluster-port", str(free_port()),
                   "--broker-port", str(port))
        elapsed = time.monotonic() - started

    # Assert: exit 1, one line naming the port, its role and the setting, fast, nothing started
    assert done.returncode == 1, done.stderr
    assert done.stderr.splitlines() == [
        f"error: port {port} (broker) is already in use by another process; stop that process (another "
        f"`treeline up`?) or choose another port with --broker-port PORT (env TREELINE_BROKER_PORT, or "
        f"broker_port in treeline.toml)"]
    assert elapsed < fail_fast_bound_s(), elapsed
    assert not (tmp_path / "state").exists()


def test_up_refuses_one_port_for_two_processes_as_a_usage_error(tmp_path: Path) -> None:
    port = str(free_port())
    done = _up(tmp_path, "--root-port", port, "--cluster-port", port)
    assert done.returncode == 2
    assert done.stderr.splitlines() == [f"error: root_port and cluster_port are both {port}; "
                                        "give each process its own port"]


def test_up_takes_its_ports_from_treeline_toml(tmp_path: Path) -> None:
    # a taken root port named only in the file: the error names it, so the file was read
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        (tmp_path / "treeline.toml").write_text(f"root_port = {port}\ncluster_port = {free_port()}\n")
        done = _up(tmp_path)
    assert done.returncode == 1
    assert done.stderr.startswith(f"error: port {port} (root) is already in use"), done.stderr
