"""The digits split for federated learning (model_zoo.federated, ``treeline data split``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from model_zoo import federated
from treeline_cli.main import cli


@pytest.fixture(scope="module")
def digits() -> federated.Shard:
    return federated.load_digits()


@pytest.mark.parametrize("alpha", [None, 0.3])
def test_sizes_add_up_and_nothing_is_shared(digits: federated.Shard, alpha: float | None) -> None:
    result = federated.split(digits, 5, alpha=alpha, seed=1)
    sizes = [len(s.y) for s in result.shards]
    assert sum(sizes) + len(result.test.y) == len(digits.y)
    every = np.concatenate([result.test.y, *(s.y for s in result.shards)])
    assert np.array_equal(np.bincount(every), np.bincount(digits.y))  # each sample exactly once
    assert min(sizes) >= 10
    assert sorted(set(result.test.y.tolist())) == list(range(10))  # stratified: every label held out


def test_iid_shares_are_near_equal_and_balanced(digits: federated.Shard) -> None:
    result = federated.split(digits, 4, seed=0)
    sizes = [len(s.y) for s in result.shards]
    assert max(sizes) - min(sizes) <= 1
    for shard in result.shards:
        assert min(shard.label_counts()) > 0


def _skew(result: federated.Split) -> float:
    """Mean over nodes of the largest label's share: 0.1 for perfectly balanced shards."""
    return float(np.mean([max(s.label_counts()) / len(s.y) for s in result.shards]))


def test_non_iid_skews_labels(digits: federated.Shard) -> None:
    iid = federated.split(digits, 5, seed=2)
    skewed = federated.split(digits, 5, alpha=0.1, seed=2)
    assert _skew(iid) < 0.2
    assert _skew(skewed) > 0.35


def test_deterministic_by_seed(digits: federated.Shard) -> None:
    a = federated.split(digits, 3, alpha=0.5, seed=7)
    b = federated.split(digits, 3, alpha=0.5, seed=7)
    c = federated.split(digits, 3, alpha=0.5, seed=8)
    assert all(np.array_equal(x.y, y.y) and np.array_equal(x.x, y.x)
               for x, y in zip(a.shards, b.shards, strict=True))
    assert any(not np.array_equal(x.y, y.y) for x, y in zip(a.shards, c.shards, strict=True))


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"nodes": 0}, "nodes must be at least 1"),
    ({"nodes": 2, "alpha": 0.0}, "alpha must be > 0"),
    ({"nodes": 2, "test_fraction": 1.0}, "test_fraction"),
])
def test_bad_arguments_name_the_field(digits: federated.Shard, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        federated.split(digits, **kwargs)


def test_cli_writes_node_files_and_test_split(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["data", "split", "digits", "--nodes", "3", "--non-iid", "0.5",
                                      "--seed", "4", "--out", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert [row["file"] for row in summary["nodes"]] == [str(tmp_path / f"node-{i}" / "digits.npz")
                                                          for i in range(3)]
    shards = [federated.load_shard(Path(row["file"])) for row in summary["nodes"]]
    test = federated.load_shard(tmp_path / "test.npz")
    assert sum(len(s.y) for s in shards) + len(test.y) == 1797
    assert [len(s.y) for s in shards] == [row["samples"] for row in summary["nodes"]]
    for i in range(3):  # whichever node the Flower server lands on evaluates on the held-out split
        copy = federated.load_shard(tmp_path / f"node-{i}" / "test.npz")
        assert np.array_equal(copy.x, test.x) and np.array_equal(copy.y, test.y)


def test_cli_refuses_mismatched_node_dirs(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["data", "split", "digits", "--nodes", "2", "--out", str(tmp_path),
                                      "--node-dir", str(tmp_path / "a")])
    assert result.exit_code != 0
    assert "--node-dir" in str(result.exception)
