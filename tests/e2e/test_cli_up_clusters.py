"""``treeline up`` with several clusters: each cluster its own orchestrator, broker and nodes.

Real processes on loopback (root, two cluster orchestrators, two brokers, small emulated nodes).
Checked: both clusters registered and active at the root and listed by ``treeline get clusters``;
each node online in its own cluster only; each cluster's broker its own (its own port, its own
password file); the ``--nodes`` list form; a list that does not match ``--clusters`` is one line
naming ``--nodes`` before anything starts; and, through the :class:`Stack` API, a cluster and its
broker killed and restarted by name, a node added to cluster 2, and cluster 2's token refused for
cluster 1's pushes (one identity per cluster at the root).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import requests

from treeline_cli.stack import Stack, StackConfig, pick_ports, start_stack
from treeline_common.netutil import free_port, poll_until

pytestmark = pytest.mark.integration


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("TREELINE_")}


def consecutive_free_ports() -> int:
    """A port P with P and P+1 both free now (``up`` puts cluster 2 on --cluster-port + 1)."""
    for _ in range(50):
        port = free_port()
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise AssertionError("no two consecutive free ports")


@contextmanager
def run_up(tmp_path: Path, *argv: str) -> Iterator[tuple[subprocess.Popen[str], list[str], int, int]]:
    """``treeline up ARGV`` until it prints ``Ready.``; yields (process, output, root port, cluster port)."""
    root_port, cluster_port = free_port(), consecutive_free_ports()
    up = subprocess.Popen([sys.executable, "-m", "treeline_cli", "up", "--data-dir", str(tmp_path / "state"),
                           "--root-port", str(root_port), "--cluster-port", str(cluster_port),
                           "--threads", "1", *argv],
                          cwd=tmp_path, env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True)
    output: list[str] = []
    ready = threading.Event()

    def read() -> None:
        assert up.stdout is not None
        for line in up.stdout:
            output.append(line)
            if line.startswith("Ready."):
                ready.set()

    threading.Thread(target=read, daemon=True).start()
    try:
        assert ready.wait(60), "treeline up never became ready:\n" + "".join(output)
        yield up, output, root_port, cluster_port
        up.send_signal(signal.SIGTERM)
        assert up.wait(timeout=30) == 0, "".join(output)
    finally:
        if up.poll() is None:
            up.kill()
            up.wait(timeout=10)


def online_names(cluster_url: str) -> set[str]:
    nodes = requests.get(f"{cluster_url}/api/nodes", timeout=5).json()["nodes"]
    return {n["name"] for n in nodes if n["online"]}


def get_clusters(tmp_path: Path, root_port: int) -> list[dict[str, Any]]:
    env = {**clean_env(), "TREELINE_ROOT_URL": f"http://127.0.0.1:{root_port}"}
    done = subprocess.run([sys.executable, "-m", "treeline_cli", "get", "clusters", "-o", "json"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    clusters: list[dict[str, Any]] = json.loads(done.stdout)
    return clusters


def test_up_with_a_nodes_list_starts_one_broker_and_cluster_per_count(tmp_path: Path) -> None:
    # Execute: the list alone implies two clusters; profiles cycle over the nodes across them
    with run_up(tmp_path, "--nodes", "2,1", "--profiles", "server,rpi4") as (_, output, root_port, port):
        urls = {"cluster-1": f"http://127.0.0.1:{port}", "cluster-2": f"http://127.0.0.1:{port + 1}"}
        listed = get_clusters(tmp_path, root_port)

        # Assert: both registered and active at the root, under their own names and URLs
        assert {c["cluster_name"]: (c["url"], c["active"]) for c in listed} == {
            name: (url, True) for name, url in urls.items()}
        # each node online in its own cluster only
        assert online_names(urls["cluster-1"]) == {"server-1", "rpi4-1"}
        assert online_names(urls["cluster-2"]) == {"server-2"}
        # each cluster has its own broker, printed with its URL, with its own password file
        printed = {line.split()[0]: line.split() for line in output if line.startswith("cluster-")}
        assert set(printed) == set(urls)
        brokers = {name: words[words.index("broker") + 1] for name, words in printed.items()}
        assert len(set(brokers.values())) == 2, brokers
        assert all(words[1] == urls[name] for name, words in printed.items())
        state = tmp_path / "state"
        if (state / "broker" / "passwd").exists():  # Mosquitto with identities (amqtt runs open)
            assert (state / "broker" / "passwd").read_text() != (state / "broker-2" / "passwd").read_text()


def test_up_with_clusters_and_one_count_puts_that_many_nodes_in_each(tmp_path: Path) -> None:
    with run_up(tmp_path, "--clusters", "2", "--nodes", "1", "--profiles", "rpi4") as (_, _, root_port, port):
        assert online_names(f"http://127.0.0.1:{port}") == {"rpi4-1"}
        assert online_names(f"http://127.0.0.1:{port + 1}") == {"rpi4-2"}
        assert sorted(c["cluster_name"] for c in get_clusters(tmp_path, root_port) if c["active"]) == [
            "cluster-1", "cluster-2"]


@pytest.mark.parametrize(("argv", "message"), [
    (("--clusters", "3", "--nodes", "2,1"),
     "error: --nodes lists 2 counts for 3 clusters; give one count per cluster (e.g. --nodes 1,1,1) or one "
     "count for every cluster"),
    (("--nodes", "2,x"),
     "error: --nodes '2,x' is not N or a list N1,N2,... of node counts; give one count per cluster, e.g. "
     "--nodes 2,1"),
])
def test_a_bad_nodes_list_is_one_line_naming_the_option(tmp_path: Path, argv: tuple[str, ...],
                                                        message: str) -> None:
    done = subprocess.run([sys.executable, "-m", "treeline_cli", "up", "--data-dir", str(tmp_path / "state"),
                           *argv], cwd=tmp_path, env=clean_env(), capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert done.stderr.splitlines() == [message]
    assert not (tmp_path / "state").exists()


@pytest.fixture()
def two_clusters(tmp_path: Path) -> Iterator[Stack]:
    config = pick_ports(StackConfig(data_dir=tmp_path / "stack", clusters=2, nodes=1, profiles=("rpi4",),
                                    node_threads=1, node_labels={}, telemetry_interval=0.5,
                                    push_interval=1.0))
    stack = start_stack(config)
    try:
        stack.wait_ready(timeout=45)
        yield stack
    finally:
        stack.stop(timeout=5)


def test_each_cluster_and_broker_is_killed_and_restarted_by_name(two_clusters: Stack) -> None:
    # Prepare
    stack = two_clusters
    first, second = stack.clusters
    assert (first.process, first.broker, second.process, second.broker) == ("cluster", "broker", "cluster-2",
                                                                            "broker-2")
    assert stack.cluster_url == first.url and stack.broker is first.broker_handle
    assert first.broker_port != second.broker_port and first.node_names == ("rpi4-1",)

    # Execute: cluster 2 and its broker crash and come back; a node joins cluster 2
    old_pid = stack.process("cluster-2").pid
    stack.kill("cluster-2")
    stack.kill("broker-2")
    stack.restart("broker-2")
    stack.restart("cluster-2")
    stack.add_node("rpi4", cluster="cluster-2")
    stack.wait_ready(timeout=45)

    # Assert: cluster 2 is a new process with the new node; cluster 1 never saw it
    assert stack.process("cluster-2").pid != old_pid
    assert stack.cluster(2).node_names == ("rpi4-2", "rpi4-3")
    assert online_names(second.url) == {"rpi4-2", "rpi4-3"}
    assert online_names(first.url) == {"rpi4-1"}
    assert stack.process("cluster").alive() and stack.cluster("broker").broker_handle is not None


def test_a_clusters_token_cannot_push_for_another_cluster(two_clusters: Stack) -> None:
    first, second = two_clusters.clusters
    assert first.cluster_token != second.cluster_token

    def cluster_ids() -> dict[str, str] | None:
        listed = requests.get(f"{two_clusters.root_url}/api/clusters/", timeout=5,
                              headers={"Authorization": f"Bearer {first.cluster_token}"}).json()
        ids = {c["cluster_name"]: c["cluster_id"] for c in listed}
        return ids if len(ids) == 2 else None

    ids = poll_until(cluster_ids, 10, what="both clusters listed")
    refused = requests.post(f"{two_clusters.root_url}/api/information/{ids['cluster-1']}", json={}, timeout=5,
                            headers={"Authorization": f"Bearer {second.cluster_token}"})
    assert refused.status_code == 403, refused.text
