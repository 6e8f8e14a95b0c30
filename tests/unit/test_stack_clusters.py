"""The layout of a stack with several clusters, without starting anything: which node goes to
which cluster under which name, which ports are claimed, the secrets each cluster gets, and the
``--clusters`` / ``--nodes`` checks of ``treeline up``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from treeline_cli.commands.stack import cluster_layout
from treeline_cli.errors import UsageError
from treeline_cli.stack_checks import check_ports, port_claims
from treeline_cli.stack_clusters import ClusterInfo, find_cluster, node_plan
from treeline_cli.stack_config import StackConfig
from treeline_cli.stack_secrets import cluster_secrets, stack_secrets

DATA = Path("/nonexistent")


@pytest.mark.parametrize(("layout", "profiles", "expected"), [
    # one cluster: the names a stack always had
    ({"nodes": 3}, ("server", "jetson-nano", "rpi4"),
     [(1, "server", "server-1"), (1, "jetson-nano", "jetson-nano-1"), (1, "rpi4", "rpi4-1")]),
    # one count for each cluster; profiles cycle across clusters, names count over the stack
    ({"clusters": 2, "nodes": 1}, ("rpi4",), [(1, "rpi4", "rpi4-1"), (2, "rpi4", "rpi4-2")]),
    ({"clusters": 2, "nodes_per_cluster": (2, 1)}, ("server", "server", "rpi4"),
     [(1, "server", "server-1"), (1, "server", "server-2"), (2, "rpi4", "rpi4-1")]),
    ({"clusters": 3, "nodes_per_cluster": (0, 1, 0)}, ("server",), [(2, "server", "server-1")]),
])
def test_node_plan(layout: dict[str, object], profiles: tuple[str, ...],
                   expected: list[tuple[int, str, str]]) -> None:
    config = StackConfig(data_dir=DATA, profiles=profiles, **layout)  # type: ignore[arg-type]
    config.validate()
    assert node_plan(config) == expected


def test_every_cluster_and_fixed_broker_port_is_claimed() -> None:
    config = StackConfig(data_dir=DATA, clusters=3, root_port=9000, cluster_port=9100, broker_port=1900)
    assert [(c.port, c.role, c.setting) for c in port_claims(config)] == [
        (9000, "root", "root_port"),
        (9100, "cluster", "cluster_port"), (9101, "cluster-2", "cluster_port"),
        (9102, "cluster-3", "cluster_port"),
        (1900, "broker", "broker_port"), (1901, "broker-2", "broker_port"), (1902, "broker-3", "broker_port")]
    picked = StackConfig(data_dir=DATA, clusters=2, cluster_port=9100, more_cluster_ports=(9555,))
    assert [c.port for c in port_claims(picked)] == [10000, 9100, 9555]  # free brokers are not claimed


def test_a_later_cluster_on_the_roots_port_is_a_usage_error_naming_both() -> None:
    config = StackConfig(data_dir=DATA, clusters=2, root_port=9101, cluster_port=9100)
    with pytest.raises(ValueError, match=r"^root_port and cluster_port \(cluster-2\) are both 9101$"):
        check_ports(config)


@pytest.mark.parametrize(("layout", "message"), [
    ({"clusters": 2, "nodes_per_cluster": (1, 1, 1)}, "nodes lists 3 counts for 2 clusters"),
    ({"clusters": 2, "mqtt_url": "mqtt://127.0.0.1:1883"}, "mqtt_url names one broker"),
    ({"clusters": 3, "more_cluster_ports": (9001,)}, "more_cluster_ports needs 2 ports"),
    ({"clusters": 0}, "clusters must be at least 1"),
])
def test_a_layout_that_does_not_add_up_is_refused(layout: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        StackConfig(data_dir=DATA, **layout).validate()  # type: ignore[arg-type]


@pytest.mark.parametrize(("clusters", "counts", "expected"), [
    (None, (), {"clusters": 1, "nodes_per_cluster": ()}),
    (3, (), {"clusters": 3, "nodes_per_cluster": ()}),
    (None, (2, 1), {"clusters": 2, "nodes_per_cluster": (2, 1)}),  # the list implies --clusters
    (2, (2, 1), {"clusters": 2, "nodes_per_cluster": (2, 1)}),
])
def test_cluster_layout_of_the_options(clusters: int | None, counts: tuple[int, ...],
                                       expected: dict[str, object]) -> None:
    assert cluster_layout(clusters, counts) == expected


def test_a_nodes_list_of_another_length_names_the_option() -> None:
    with pytest.raises(UsageError) as error:
        cluster_layout(3, (2, 1))
    assert error.value.line().startswith("--nodes lists 2 counts for 3 clusters; ")


def test_each_cluster_has_its_own_secrets_kept_across_starts(tmp_path: Path) -> None:
    first = stack_secrets(tmp_path)
    assert set(json.loads((tmp_path / "stack_secrets.json").read_text())) == {"cluster_token", "join_token"}
    three = cluster_secrets(tmp_path, 3)
    assert three[0] == first and len({c for c, _ in three}) == 3 and len({j for _, j in three}) == 3
    assert cluster_secrets(tmp_path, 3) == three and cluster_secrets(tmp_path, 2) == three[:2]
    assert stack_secrets(tmp_path) == first


def test_find_cluster_by_index_name_process_or_broker() -> None:
    names = ((1, "cluster", "broker"), (2, "cluster-2", "broker-2"))
    clusters = [ClusterInfo(index=i, name=f"cluster-{i}", url="", process=p, broker=b, broker_port=0,
                            mqtt_url="") for i, p, b in names]
    assert [find_cluster(clusters, ref).index for ref in (1, 2, "cluster-1", "cluster", "broker", "cluster-2",
                                                          "broker-2")] == [1, 2, 1, 1, 1, 2, 2]
    with pytest.raises(KeyError, match="cluster-3"):
        find_cluster(clusters, "cluster-3")


def test_ports_past_65535_are_a_usage_error_naming_the_setting(tmp_path: Path) -> None:
    from treeline_cli.stack_config import StackConfig

    with pytest.raises(ValueError, match="cluster_port 65535 leaves no room for 2 clusters"):
        StackConfig(data_dir=tmp_path, clusters=2, cluster_port=65535).validate()
    with pytest.raises(ValueError, match="broker_port 65534 leaves no room for 3 clusters"):
        StackConfig(data_dir=tmp_path, clusters=3, cluster_port=20000, broker_port=65534).validate()
    StackConfig(data_dir=tmp_path, clusters=2, cluster_port=65534).validate()  # 65534, 65535: fits


def test_cluster_1_names_cluster_ones_process(tmp_path: Path) -> None:
    """The root calls cluster 1 ``cluster-1``; its process keeps a one-cluster stack's name."""
    from types import SimpleNamespace

    from treeline_cli.stack import Stack

    first, second = SimpleNamespace(name="cluster"), SimpleNamespace(name="cluster-2")
    stack = Stack(StackConfig(data_dir=tmp_path, clusters=2), processes=[first, second])  # type: ignore[list-item]
    assert stack.process("cluster-1") is first and stack.process("cluster-2") is second
    with pytest.raises(KeyError, match="no process 'cluster-3' in this stack"):
        stack.process("cluster-3")
