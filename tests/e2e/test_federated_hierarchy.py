"""Hierarchical federated learning on a real two-cluster stack (FLOps-style, issue 14).

Real processes on loopback: root, 2 cluster orchestrators with their own brokers, 2 node engines
per cluster, all labelled ``data:digits``; digits split non-IID (Dirichlet 0.5) over the 4 nodes,
the held-out split on each. A ``training.hierarchical`` SLA (FedAvg, 3 global rounds x 1 cluster
round) makes one root part (the root aggregator, a Flower server on cluster 1) and one cluster
part per cluster (a cluster aggregator, a Flower client of the root aggregator that runs its
cluster's local rounds, and 2 local clients). Checked: every part ends DELETED (the root part
having registered the result, the cluster parts "aggregated into <service>/<root instance>"),
the accuracy on the held-out split rises over the global rounds, the new version's lineage
records the hierarchy, and no Flower process is left. Fault: one cluster aggregator's process
is killed after the first local round; its cluster part starts it again
(``training_aggregator_restarted``) and that cluster still trains the last global round.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from test_federated_stack import flower_processes
from treeline_test_helpers import running_stack

pytest.importorskip("flwr")
pytest.importorskip("torch")

from model_zoo import federated
from node_engine.training import model as mlp
from treeline_cli.root_client import RootClient
from treeline_cli.stack import Stack

pytestmark = pytest.mark.integration

NODES = ("server-1", "server-2", "server-3", "server-4")  # cluster 1: 1-2, cluster 2: 3-4
ROUNDS = 3  # the kill lands in round 1 or 2 (the root hears of the first local round late); round 3 after it
DEADLINE_S = 240.0


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    data = tmp_path_factory.mktemp("hfl-stack")
    dirs = [data / "nodes" / name for name in NODES]
    split = federated.split(federated.load_digits(), len(NODES), alpha=0.5, seed=3)
    federated.write_split(split, data / "fl-split", dirs)
    for d in dirs:
        (d / federated.TEST_FILE).write_bytes((data / "fl-split" / federated.TEST_FILE).read_bytes())
    with running_stack(data, clusters=2, nodes=2, profiles=("server",), telemetry_interval=0.5,
                       node_threads=1, node_labels=dict.fromkeys(NODES, "data:digits")) as running:
        yield running


def hierarchical_sla(parent: str) -> dict[str, Any]:
    training = {"framework": "flower", "strategy": "fedavg", "rounds": ROUNDS, "min_clients": 2,
                "local_epochs": 5, "batch_size": 16, "learning_rate": 0.3, "data": "data:digits",
                "model": parent, "hierarchical": {"cluster_rounds": 1, "min_clusters": 2}}
    microservice = {"microserviceID": "", "microservice_name": "hfl", "microservice_namespace": "demo",
                    "virtualization": "ml-training", "memory": 128, "vcpus": 1, "training": training,
                    "constraints": [], "connectivity": []}
    return {"sla_version": "v2.0", "customerID": "Admin", "applications": [{
        "applicationID": "", "application_name": "hfl", "application_namespace": "demo",
        "application_desc": "hierarchical federated", "microservices": [microservice]}]}


def test_a_hierarchical_job_trains_across_two_clusters_and_registers_its_result(stack: Stack,
                                                                                tmp_path: Path) -> None:
    started = time.monotonic()
    root = RootClient(stack.root_url)
    parent = root.register_model("digits-hfl", mlp.to_onnx(mlp.new_model(0)))
    [application] = root.apply(hierarchical_sla(f"digits-hfl:{parent['version']}"))
    [service_id] = application["microservices"]
    created = root.deploy_service(service_id)
    assert [p["role"] for p in created["parts"]] == ["root", "cluster", "cluster"], created
    assert {p["cluster_name"] for p in created["parts"] if p["role"] == "cluster"} == {
        c.name for c in stack.clusters}
    root_instance = created["instance"]
    deadline = time.monotonic() + DEADLINE_S
    seen: set[int] = set()

    def statuses() -> dict[int, tuple[str, str]]:
        return {int(i["instance"]): (str(i["status"]), str(i.get("status_detail") or ""))
                for i in root.service(service_id).get("instances") or []}

    killed = 0
    while (any(s not in ("DELETED", "FAILED") for s, _ in statuses().values())
           and time.monotonic() < deadline):
        seen.update(flower_processes(stack))
        if not killed and any(e.get("kind") == "training_cluster_round"
                              for e in root.service_events(service_id)):
            killed = kill_an_aggregator(stack)
        time.sleep(0.5)  # polling the root with a deadline
    final = statuses()
    events = root.service_events(service_id)
    assert {s for s, _ in final.values()} == {"DELETED"}, (final, [e for e in events if "fail" in e["kind"]])
    assert final[root_instance][1].startswith("training done: registered digits-hfl:"), final
    assert root.service(service_id)["status_detail"] == final[root_instance][1]  # the root part speaks
    for number, (_, detail) in final.items():
        if number != root_instance:
            assert detail == f"cluster part done, aggregated into {service_id}/{root_instance}", final

    version = root.model_version("digits-hfl", "latest")
    assert version["version"] == parent["version"] + 1
    params = version["lineage"]["parameters"]
    assert params["hierarchical"] == {"cluster_rounds": 1, "min_clusters": 2,
                                      "clusters": sorted(c.name for c in stack.clusters)}, params
    accuracies = params["accuracy_per_round"]
    assert len(accuracies) == ROUNDS + 1 and accuracies[-1] > accuracies[0] + 0.2, accuracies
    rounds = [e for e in events if e.get("kind") == "training_round" and e.get("instance") == root_instance]
    assert len(rounds) == ROUNDS + 1 and rounds[-1]["clients"] == 2, rounds  # both clusters at the end
    assert killed and [e for e in events if e.get("kind") == "training_aggregator_restarted"], events
    local = [e for e in events if e.get("kind") == "training_cluster_round"]
    assert {e["clients"] for e in local} == {2}, local
    last = {e["instance"] for e in local if e.get("round") == ROUNDS}  # every cluster trained the last round
    assert last == {n for n in final if n != root_instance}, local

    deadline = time.monotonic() + 15
    while flower_processes(stack) and time.monotonic() < deadline:  # every part stopped its processes
        time.sleep(0.2)
    assert len(seen) >= 7 and flower_processes(stack) == [], seen  # 1 root + 2 aggregators + 4 clients
    restarts = [e["message"] for e in events if e.get("kind") == "training_aggregator_restarted"]
    print(f"hierarchical e2e: accuracy per global round {accuracies}, clusters per global round "
          f"{[e['clients'] for e in rounds]}, {restarts}, {time.monotonic() - started:.1f} s "
          "(measured under load)")


def kill_an_aggregator(stack: Stack) -> int:
    """SIGKILL one cluster aggregator process of the stack's nodes; its pid (0: none runs yet)."""
    for pid in flower_processes(stack):
        try:
            proc = psutil.Process(pid)
            if any(a == "node_engine.training.aggregator" for a in proc.cmdline()):
                proc.kill()
                return pid
        except psutil.Error:
            continue
    return 0
