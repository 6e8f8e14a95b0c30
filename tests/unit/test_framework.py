"""The filter-and-score runner, registry, profiles and explanations (with fake and real plugins)."""

from __future__ import annotations

import dataclasses
import json
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deployment_descriptors import NodeSelector, load_profile, parse_microservice
from ml_scheduler.framework import (
    REASON_PIN_FILTERED,
    Code,
    Framework,
    GraphStats,
    PlacementRequest,
    PluginError,
    Registry,
    Status,
    UnknownPlugin,
    explain,
    run_filters_and_scores,
)
from ml_scheduler.graph import analyze_model
from ml_scheduler.plugins import FILTER_NAMES, PLUGINS, SCORE_NAMES
from ml_scheduler.plugins import filters as f
from ml_scheduler.snapshot import ClusterSnapshot, NodeView
from model_zoo.tiny import tiny_dag_model
from treeline_test_helpers import BASE_REQUEST, MIB
from treeline_test_helpers import node_view as node

REQUEST = BASE_REQUEST
DEFAULT = Framework.from_profile(load_profile("default"))


def profile(**weights: float) -> SimpleNamespace:
    return SimpleNamespace(name="test", weights=weights)


# ------------------------------------------------------------------ registry and profiles


def test_every_shipped_profile_builds_a_framework() -> None:
    for name in ("default", "amp4ec-baseline", "flops-balanced"):
        framework = Framework.from_profile(load_profile(name))
        assert set(framework.weights) <= set(SCORE_NAMES)
        assert tuple(p.name for p in framework.filters) == FILTER_NAMES
    assert dict(DEFAULT.weights) == dict(load_profile("default").weights)


def test_unknown_weight_fails_at_start_up_listing_known_score_plugins() -> None:
    with pytest.raises(UnknownPlugin) as err:
        Framework.from_profile(profile(compute=0.5, speed=0.5))
    assert "'speed'" in err.value.message
    assert "known: battery, compute, energy, link, load, memory" in err.value.message
    assert all(name in err.value.message for name in SCORE_NAMES)
    with pytest.raises(UnknownPlugin, match="node_memory"):  # a filter is not a score plugin
        Framework.from_profile(profile(node_memory=1.0))


def test_registry_create_and_duplicates() -> None:
    assert PLUGINS.create("compute").name == "compute"
    with pytest.raises(UnknownPlugin, match="known: .*node_online"):
        PLUGINS.create("nope")
    with pytest.raises(ValueError, match="already exists"):
        Registry.of(f.NodeOnline, f.NodeOnline)


def test_status_codes_are_closed() -> None:
    assert {c.value for c in Code} == {"success", "unschedulable", "unschedulable_and_unresolvable", "error"}
    assert Status().is_success and not Status(Code.ERROR, ("x",), "p").is_success


# ------------------------------------------------------------------ the runner


def cluster() -> ClusterSnapshot:
    return ClusterSnapshot((
        node("d", speed_factor=0.5),
        node("a"),
        node("c", online=False),
        node("b"),  # ties with "a": ordered by node_id
        node("e", memory_limit_mb=50.0),
        node("f", speed_factor=0.1, labels=("camera",), battery_percent=40.0),
    ))


def test_every_node_is_either_rejected_or_scored_and_ranked() -> None:
    result = run_filters_and_scores(REQUEST, cluster(), DEFAULT, shortlist_size=2)
    assert set(result.rejected) == {"c", "e"}
    assert result.rejected["c"] == ("node_online", "offline", "node name-c is not online")
    assert result.rejected["e"].code == "insufficient_memory"
    assert result.candidate_ids == ("a", "b", "d", "f")
    assert list(result.candidate_ids) == [cluster().nodes[i].node_id for i in result.candidates]
    totals = [result.scores[n].total for n in result.candidate_ids]
    assert totals == sorted(totals, reverse=True) and totals[0] == totals[1]
    assert result.shortlist == ("a", "b")
    assert set(result.scores["a"].by_plugin) == set(DEFAULT.weights)
    assert result.status("c").code is Code.UNSCHEDULABLE
    assert result.status("e").code is Code.UNSCHEDULABLE_AND_UNRESOLVABLE
    assert result.status("a").is_success


def test_result_does_not_depend_on_node_order() -> None:
    snapshot = cluster()
    shuffled = ClusterSnapshot(tuple(reversed(snapshot.nodes)))
    one = run_filters_and_scores(REQUEST, snapshot, DEFAULT)
    two = run_filters_and_scores(REQUEST, shuffled, DEFAULT)
    assert one.candidate_ids == two.candidate_ids and one.shortlist == two.shortlist
    assert explain(one) == explain(two) == explain(run_filters_and_scores(REQUEST, snapshot, DEFAULT))


@pytest.mark.parametrize("selector", [NodeSelector(node="name-f"), NodeSelector(node="f"),
                                      NodeSelector(label="camera")])
@pytest.mark.parametrize("field", ["privacy_pin", "source"])
def test_pin_and_source_are_always_shortlisted(selector: NodeSelector, field: str) -> None:
    request = dataclasses.replace(REQUEST, **{field: selector})  # type: ignore[arg-type]
    result = run_filters_and_scores(request, cluster(), DEFAULT, shortlist_size=1)
    assert result.candidate_ids[-1] == "f"  # the slowest, on battery: ranked last
    assert result.shortlist == ("a", "f")


def test_pin_and_source_both_added_to_a_shortlist_of_one() -> None:
    request = dataclasses.replace(REQUEST, privacy_pin=NodeSelector(node="f"), source=NodeSelector(node="d"))
    assert run_filters_and_scores(request, cluster(), DEFAULT, shortlist_size=1).shortlist == ("a", "d", "f")
    request = dataclasses.replace(REQUEST, privacy_pin=NodeSelector(node="b"))  # already in the top 2
    assert run_filters_and_scores(request, cluster(), DEFAULT, shortlist_size=2).shortlist == ("a", "b")


def test_pinned_node_filtered_by_another_plugin_makes_the_request_unschedulable() -> None:
    request = dataclasses.replace(REQUEST, privacy_pin=NodeSelector(label="camera"), min_battery_percent=50.0)
    result = run_filters_and_scores(request, cluster(), DEFAULT)
    assert result.shortlist == () and not result.schedulable and len(result.scores) == 0
    assert result.rejected["f"].code == "battery"
    assert result.rejected["a"].plugin == "privacy_pin" and result.rejected["a"].code == REASON_PIN_FILTERED
    assert "f: battery" in result.rejected["a"].message


def test_pin_matching_no_online_node_rejects_every_node_as_unresolvable() -> None:
    request = dataclasses.replace(REQUEST, privacy_pin=NodeSelector(node="c"))  # c is offline
    result = run_filters_and_scores(request, cluster(), DEFAULT)
    assert {r.code for r in result.rejected.values()} == {f.REASON_PRIVACY_PIN}
    assert len(result.rejected) == 6 and result.status("a").code is Code.UNSCHEDULABLE_AND_UNRESOLVABLE


def test_empty_cluster_and_bad_shortlist_size() -> None:
    empty = run_filters_and_scores(REQUEST, ClusterSnapshot(()), DEFAULT)
    assert empty.shortlist == () and explain(empty)["scores"] == {}
    with pytest.raises(ValueError):
        run_filters_and_scores(REQUEST, cluster(), DEFAULT, shortlist_size=0)


def test_accepts_a_scheduler_profile_directly() -> None:
    via_profile = run_filters_and_scores(REQUEST, cluster(), load_profile("default"))
    assert explain(via_profile) == explain(run_filters_and_scores(REQUEST, cluster(), DEFAULT))


class _BrokenFilter:
    name = "broken"
    rejection = Code.UNSCHEDULABLE

    def filter(self, request: object, snapshot: ClusterSnapshot) -> np.ndarray:
        return np.ones(3)  # wrong dtype and shape

    def reasons(self, request: object, snapshot: object, rejected: np.ndarray) -> list[tuple[str, str]]:
        return []


class _OutOfRange:
    name = "wild"

    def score(self, request: object, snapshot: object, candidates: np.ndarray) -> np.ndarray:
        return np.full(len(candidates), 101.0)


def test_a_plugin_breaking_its_contract_is_named_in_the_error() -> None:
    with pytest.raises(PluginError) as err:
        broken = Framework.from_profile(profile(), Registry.of(_BrokenFilter))
        run_filters_and_scores(REQUEST, cluster(), broken)
    assert err.value.status.plugin == "broken" and err.value.status.code is Code.ERROR
    with pytest.raises(PluginError, match="wild"):
        wild = Framework.from_profile(profile(wild=1.0), Registry.of(_OutOfRange))
        run_filters_and_scores(REQUEST, cluster(), wild)


def test_weights_drive_the_ranking() -> None:
    snapshot = ClusterSnapshot((node("fast", speed_factor=1.0, cpu_percent=90.0),
                                node("idle", speed_factor=0.5, cpu_percent=0.0)))
    by_speed = run_filters_and_scores(REQUEST, snapshot, Framework.from_profile(profile(compute=1.0)))
    by_load = run_filters_and_scores(REQUEST, snapshot, Framework.from_profile(profile(load=1.0)))
    assert by_speed.candidate_ids == ("fast", "idle") and by_load.candidate_ids == ("idle", "fast")
    assert by_load.scores["idle"].total == 100.0 and by_load.scores["fast"].total == pytest.approx(10.0)


# ------------------------------------------------------------------ explain


def test_explain_is_json_and_complete() -> None:
    snapshot = cluster()
    result = run_filters_and_scores(REQUEST, snapshot, DEFAULT, shortlist_size=3)
    doc = json.loads(json.dumps(explain(result)))
    assert set(doc["filtered"]) | set(doc["scores"]) == {n.node_id for n in snapshot.nodes}
    assert not set(doc["filtered"]) & set(doc["scores"])
    assert doc["filtered"]["e"] == {"plugin": "node_memory", "code": "insufficient_memory",
                                    "status": "unschedulable_and_unresolvable",
                                    "message": "node has 50.00 MiB, smallest stage needs 100.00 MiB"}
    assert list(doc["scores"]) == ["a", "b", "d", "f"] and doc["shortlist"] == ["a", "b", "d"]
    assert set(doc["scores"]["a"]) == {"total", "by_plugin"} and doc["weights"]["compute"] == 0.4


# ------------------------------------------------------------------ the request


def test_request_from_microservice_reads_the_sla() -> None:
    ms = parse_microservice({
        "microservice_name": "clf", "microservice_namespace": "demo", "virtualization": "ml-model",
        "vgpus": 1,
        "model": {"name": "tiny", "max_partitions": 2, "source": {"label": "camera"}},
        "constraints": [{"type": "direct", "node": "n1; n2"}, {"type": "direct", "node": "n3"},
                        {"type": "privacy_pin", "node": "n1"}, {"type": "battery", "min_percent": 30},
                        {"type": "energy", "max_mj_per_inference": 50},
                        {"type": "e2e_latency", "threshold_ms": 80}],
    })
    graph = analyze_model(tiny_dag_model())
    request = PlacementRequest.from_microservice(ms, graph)
    stats = GraphStats.from_graph(graph)
    assert request == PlacementRequest.from_microservice(ms, stats)
    assert request.direct_nodes == ("n1", "n2", "n3") and request.required_accelerators == ("gpu",)
    assert request.privacy_pin == NodeSelector(node="n1") and request.source == NodeSelector(label="camera")
    assert (request.min_battery_percent, request.energy_budget_mj, request.latency_ms) == (30.0, 50.0, 80.0)
    assert request.max_partitions == 2 and request.model_flops == graph.total_flops
    assert request.model_param_bytes == graph.param_bytes and request.input_bytes == 3 * 16 * 16 * 4
    smallest = min(op.param_bytes + graph.cut_bytes(i) + op.output_bytes for i, op in enumerate(graph.ops))
    assert 0 < request.min_stage_bytes == smallest


# ------------------------------------------------------------------ properties

_nodes = st.lists(st.builds(
    node,
    st.sampled_from(["a", "b", "c", "d", "e", "f", "g", "h"]),
    online=st.booleans(),
    speed_factor=st.sampled_from([0.0, 0.05, 0.25, 0.5, 1.0]),
    memory_limit_mb=st.sampled_from([None, 64.0, 512.0, 4096.0]),
    arch=st.sampled_from(["x86_64", "aarch64"]),
    accelerators=st.sampled_from([(), ("gpu",)]),
    battery_percent=st.sampled_from([None, 10.0, 60.0]),
    labels=st.sampled_from([(), ("camera",), ("server",)]),
    power_w=st.sampled_from([1.0, 10.0, 65.0]),
    cpu_percent=st.floats(0, 100),
), max_size=8, unique_by=lambda n: n.node_id)
_requests = st.builds(
    PlacementRequest,
    model_param_bytes=st.just(10 * MIB), min_stage_bytes=st.sampled_from([0, 100 * MIB, 1000 * MIB]),
    model_flops=st.just(1e9), input_bytes=st.just(600_000),
    required_accelerators=st.sampled_from([(), ("gpu",)]),
    allowed_archs=st.sampled_from([(), ("aarch64",)]),
    min_battery_percent=st.sampled_from([None, 50.0]),
    direct_labels=st.sampled_from([(), ("server",)]),
    privacy_pin=st.sampled_from([None, NodeSelector(label="camera"), NodeSelector(node="name-a")]),
    source=st.sampled_from([None, NodeSelector(node="b")]),
    energy_budget_mj=st.sampled_from([None, 5.0, 500.0]),
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(nodes=_nodes, request=_requests, size=st.integers(1, 4))
def test_no_filtered_node_is_ever_shortlisted(nodes: list[NodeView], request: PlacementRequest,
                                              size: int) -> None:
    snapshot = ClusterSnapshot(tuple(nodes))
    result = run_filters_and_scores(request, snapshot, DEFAULT, shortlist_size=size)
    assert not set(result.shortlist) & set(result.rejected)
    assert set(result.rejected) | set(result.scores) == {n.node_id for n in nodes}
    assert len(result.shortlist) <= size + 2 and len(set(result.shortlist)) == len(result.shortlist)
    assert list(result.shortlist) == [n for n in result.candidate_ids if n in result.shortlist]
    for selector in (request.privacy_pin, request.source):
        matching = [n.node_id for n in nodes if n.node_id in result.scores and selector is not None
                    and (selector.matches(n.name, n.labels) or selector.node == n.node_id)]
        assert not matching or set(matching) & set(result.shortlist)
    if request.privacy_pin is not None and result.shortlist:
        assert any(request.privacy_pin.matches(snapshot.by_id(n).name, snapshot.by_id(n).labels)
                   for n in result.shortlist)
    totals = [result.scores[n].total for n in result.candidate_ids]
    assert totals == sorted(totals, reverse=True)
    json.dumps(explain(result))


def test_the_slas_arch_list_filters_nodes_in_any_spelling() -> None:
    """An SLA's ``arch`` (Docker's ``amd64``/``arm64`` or ``platform.machine()`` names) is enforced
    inside the cluster too, not only by the root's choice of cluster."""
    from deployment_descriptors.views import Microservice
    from ml_scheduler.framework.request import GraphStats, PlacementRequest

    raw = {"microservice_name": "m", "microservice_namespace": "n", "virtualization": "ml-model",
           "arch": ["amd64"], "constraints": []}
    request = PlacementRequest.from_microservice(Microservice.from_dict(raw), GraphStats(1, 1, 1, 1))
    assert "x86_64" in request.allowed_archs and "amd64" in request.allowed_archs
    assert "aarch64" not in request.allowed_archs
    none = PlacementRequest.from_microservice(Microservice.from_dict({**raw, "arch": []}), GraphStats(1, 1, 1, 1))
    assert none.allowed_archs == ()
