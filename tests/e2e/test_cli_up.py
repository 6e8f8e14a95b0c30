"""``treeline up`` starts every part as its own process and SIGTERM stops all of them."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
from pathlib import Path

import psutil
import pytest
import requests

from treeline_common.netutil import free_port

pytestmark = pytest.mark.integration


def test_up_starts_everything_and_sigterm_leaves_no_orphan(tmp_path: Path) -> None:
    # Prepare
    root_port, cluster_port = free_port(), free_port()
    cmd = [sys.executable, "-m", "treeline_cli", "up", "--nodes", "2", "--data-dir", str(tmp_path),
           "--root-port", str(root_port), "--cluster-port", str(cluster_port)]
    up = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
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
        children = psutil.Process(up.pid).children(recursive=True)
        # broker + root + cluster + 2 nodes, each a separate process
        assert len(children) >= 5
        up.send_signal(signal.SIGTERM)
        assert up.wait(timeout=30) == 0
    finally:
        if up.poll() is None:
            up.kill()

    # Assert: no child outlived it
    gone, alive = psutil.wait_procs(children, timeout=10)
    assert not alive, f"orphans left: {[p.pid for p in alive]}"
