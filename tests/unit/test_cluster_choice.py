"""ML-aware cluster choice: the filter over pushed aggregates, and the dry-run chooser."""

from __future__ import annotations

import copy
import threading
from typing import Any

import pytest

from root_orchestrator.cluster_choice import ClusterChooser, plan_cost
from root_orchestrator.cluster_client import ClusterClient
from root_orchestrator.cluster_filter import ClusterNeeds, filter_clusters, needs_of
from treeline_common.errors import Unavailable

NOW = 1000.0


def cluster(name: str, *, last_push: float = NOW, **aggregate: Any) -> dict[str, Any]:
    base = {"active_nodes": 2, "memory_total_free_mb": 4000, "memory_largest_free_mb": 2000,
            "architectures": {"x86_64": 2}, "accelerator_kinds": {}, "best_speed_factor": 1.0}
    return {"cluster_id": f"id-{name}", "cluster_name": name, "url": f"http://{name}:1",
            "registered_at": 0.0, "last_push": last_push, "aggregate": {**base, **aggregate}}


def ms(**fields: Any) -> dict[str, Any]:
    return {"microservice_name": "m", "virtualization": "ml-model", "constraints": [],
            "model": {"name": "x", "max_partitions": 1}, **fields}


def names(clusters: list[dict[str, Any]]) -> list[str]:
    return [c["cluster_name"] for c in clusters]


def test_needs_of_reads_oakestra_constraints() -> None:
    needs = needs_of(ms(arch=["amd64", "arm64"], vgpus=1,
                        constraints=[{"type": "clusters", "allowed": ["a", "b"]},
                                     {"type": "direct", "cluster": "b;c"},
                                     {"type": "addons", "needs": ["TPU"]}],
                        model={"name": "x", "max_partitions": 3}), model_bytes=3 * 2**20)
    assert needs.allowed == frozenset({"b"}) and needs.pinned  # both constraints must hold
    assert needs.architectures == ("x86_64", "aarch64")
    assert needs.accelerators == ("gpu", "tpu")
    assert needs.model_mb == pytest.approx(3.0) and needs.split
    assert not needs_of(ms()).pinned and needs_of(ms()).allowed is None


def test_filter_names_a_reason_for_every_cluster_it_drops() -> None:
    clusters = [
        cluster("ok"),
        cluster("stale", last_push=NOW - 31),
        cluster("arm", architectures={"aarch64": 3}),
        cluster("small", memory_total_free_mb=900, memory_largest_free_mb=300),
        cluster("empty", active_nodes=0, memory_total_free_mb=0, memory_largest_free_mb=0),
    ]
    needs = ClusterNeeds(architectures=("x86_64",), model_mb=500.0, split=False)
    ok, rejected = filter_clusters(clusters, needs, NOW, 30.0)
    assert names(ok) == ["ok", "empty"]  # no node online yet: kept, last (a job waits there for nodes)
    assert rejected["stale"].startswith("inactive") and rejected["arm"].startswith("arch")
    assert rejected["small"].startswith("memory") and "largest node" in rejected["small"]
    assert "empty" not in rejected


def test_a_split_model_needs_total_memory_not_the_largest_node() -> None:
    spread = cluster("spread", memory_total_free_mb=4000, memory_largest_free_mb=1000)
    whole = ClusterNeeds(model_mb=1500.0, split=False)
    split = ClusterNeeds(model_mb=1500.0, split=True)
    assert filter_clusters([spread], whole, NOW, 30.0)[0] == []
    assert names(filter_clusters([spread], split, NOW, 30.0)[0]) == ["spread"]
    assert names(filter_clusters([spread], ClusterNeeds(model_mb=4500.0, split=True), NOW, 30.0)[0]) == []


def test_filter_honours_allowed_clusters_accelerators_and_exclusion() -> None:
    clusters = [cluster("a"), cluster("b", accelerator_kinds={"gpu": 1}), cluster("c", accelerator_kinds={"gpu": 2})]
    ok, rejected = filter_clusters(clusters, ClusterNeeds(allowed=frozenset({"b", "a"}), accelerators=("gpu",)),
                                   NOW, 30.0, exclude=("id-b",))
    assert ok == [] and rejected["a"].startswith("accelerator") and rejected["b"].startswith("excluded")
    assert rejected["c"].startswith("not_allowed")


def test_coarse_order_fastest_device_then_nodes_and_never_pushed_last() -> None:
    fresh = {"cluster_id": "id-new", "cluster_name": "new", "url": "http://new:1", "registered_at": NOW,
             "last_push": 0.0, "aggregate": {}}
    clusters = [cluster("many", active_nodes=9), cluster("fast", best_speed_factor=4.0), fresh, cluster("few")]
    ok, _ = filter_clusters(clusters, ClusterNeeds(), NOW, 30.0)
    assert names(ok) == ["fast", "many", "few", "new"]


class PlanningClient(ClusterClient):
    """Answers dry runs from ``plans`` (URL -> summary or exception); counts concurrent calls."""

    def __init__(self, plans: dict[str, Any]) -> None:
        self.plans = plans
        self.asked: list[str] = []
        self.lock = threading.Lock()

    def plan(self, cluster_url: str, job: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            self.asked.append(cluster_url)
        answer = self.plans[cluster_url]
        if isinstance(answer, Exception):
            raise answer
        return copy.deepcopy(answer)

    def deploy(self, cluster_url: str, service_id: str, instance: int, job: dict[str, Any]) -> None:
        raise AssertionError("the chooser never deploys")

    def undeploy(self, cluster_url: str, service_id: str, instance: int) -> None:
        raise AssertionError("the chooser never undeploys")

    def profile(self, cluster_url: str, request: dict[str, Any]) -> dict[str, Any]:
        raise AssertionError("the chooser never profiles")


def summary(latency: float, bottleneck: float = 1.0, energy: float = 1.0, ok: bool = True) -> dict[str, Any]:
    return {"schedulable": ok, "strategy": "optimal", "message": "" if ok else "no node fits",
            "predicted": {"latency_ms": latency, "bottleneck_ms": bottleneck, "energy_mj": energy,
                          "objective": "latency"}, "stages": [], "reasons": {}}


def test_the_cheapest_dry_run_wins_not_the_coarse_order() -> None:
    clusters = [cluster("a"), cluster("b"), cluster("c"), cluster("d")]
    client = PlanningClient({"http://a:1": summary(9.0), "http://b:1": summary(3.0),
                             "http://c:1": Unavailable("down"), "http://d:1": summary(1.0)})
    choice = ClusterChooser(client, ask=3).choose(clusters, {"job": 1}, "latency", {"e": "inactive: ..."})
    assert sorted(client.asked) == ["http://a:1", "http://b:1", "http://c:1"]  # at most `ask`
    assert names(list(choice.order)) == ["b", "a", "c", "d"]  # schedulable by cost, failed, not asked
    event = choice.event(choice.order[0], "deploy", NOW)
    assert event["kind"] == "cluster_choice" and event["chosen"] == "b" and event["rejected"] == {"e": "inactive: ..."}
    answers = {a["cluster_name"]: a for a in event["candidates"]}
    assert answers["b"]["cost"] == 3.0 and answers["c"]["ok"] is False and "down" in answers["c"]["error"]


def test_throughput_objective_compares_the_bottleneck_and_unschedulable_goes_last() -> None:
    clusters = [cluster("a"), cluster("b"), cluster("c")]
    client = PlanningClient({"http://a:1": summary(1.0, bottleneck=8.0), "http://b:1": summary(5.0, bottleneck=2.0),
                             "http://c:1": summary(0.1, ok=False)})
    choice = ClusterChooser(client, ask=3).choose(clusters, {}, "throughput")
    assert names(list(choice.order)) == ["b", "a", "c"]
    assert plan_cost({"latency_ms": 2.0, "energy_mj": 3.0}, "latency") == (2.0, 3.0)
    assert plan_cost({}, "throughput")[0] == float("inf")


def test_one_candidate_means_no_dry_run() -> None:
    client = PlanningClient({})
    choice = ClusterChooser(client).choose([cluster("only")], {}, "latency")
    assert names(list(choice.order)) == ["only"] and client.asked == [] and choice.answers == ()


def test_a_dry_run_that_answers_nonsense_is_a_failed_answer_not_an_error() -> None:
    client = PlanningClient({"http://a:1": {"nope": True}, "http://b:1": summary(2.0)})
    choice = ClusterChooser(client).choose([cluster("a"), cluster("b")], {}, "latency")
    assert names(list(choice.order)) == ["b", "a"]
    assert choice.answers[1]["ok"] is False


def test_a_tie_on_predicted_cost_is_labelled() -> None:
    client = PlanningClient({"http://a:1": summary(64.21), "http://b:1": summary(64.21),
                             "http://c:1": summary(90.0)})
    choice = ClusterChooser(client).choose([cluster("a"), cluster("b"), cluster("c")], {}, "latency")
    event = choice.event(choice.order[0], "deploy", NOW)
    assert choice.tie and event["tie"] and "a tie on predicted cost" in event["message"]
    clear = ClusterChooser(PlanningClient({"http://a:1": summary(9.0), "http://b:1": summary(3.0)})).choose(
        [cluster("a"), cluster("b")], {}, "latency")
    assert not clear.tie and "tie" not in clear.event(clear.order[0], "deploy", NOW)["message"]
