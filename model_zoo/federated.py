"""scikit-learn's digits split across nodes for federated learning (``treeline data split``).

The split is pure and deterministic for a seed: first a stratified held-out test split is kept
aside (it never goes to a node: the aggregator evaluates on it), then the rest is partitioned

- ``iid``: a seeded permutation cut into ``nodes`` near-equal shares;
- ``dirichlet(alpha)``: for every label, proportions ``p ~ Dirichlet(alpha · 1_nodes)`` decide
  how that label's samples are shared out (Hsu et al. 2019, "Measuring the effects of non-identical
  data distribution for federated visual classification"). Small ``alpha`` (0.1) gives each node
  a few labels; large ``alpha`` (100) approaches IID. Every node is guaranteed at least
  ``min_per_node`` samples (the draw is repeated, up to 100 times, until that holds).

Arrays: ``x`` float32 ``[n, 64]`` (pixel intensities scaled to 0..1), ``y`` int64 ``[n]`` in 0..9.
Files: ``<out>/test.npz`` and ``<out>/node-<i>/digits.npz`` (or the directories given), each
with arrays ``x`` and ``y``. Only numpy is needed to read them; scikit-learn only to make them.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

FEATURES = 64  # 8×8 pixels
CLASSES = 10
DATA_FILE = "digits.npz"  # the file name in a node's data directory (label ``data:digits``)
TEST_FILE = "test.npz"


@dataclass(frozen=True)
class Shard:
    """One node's local data: ``x`` float32 [n, 64] in 0..1, ``y`` int64 [n]."""

    x: np.ndarray
    y: np.ndarray

    def label_counts(self) -> list[int]:
        """How many samples of each label 0..9 the shard holds."""
        return np.bincount(self.y, minlength=CLASSES).astype(int).tolist()


@dataclass(frozen=True)
class Split:
    """The held-out test split and one shard per node."""

    test: Shard
    shards: list[Shard]


def load_digits() -> Shard:
    """All 1,797 digits from scikit-learn (bundled with the package: no download)."""
    from sklearn.datasets import load_digits as sk_load  # type: ignore[import-untyped]  # export extra

    data = sk_load()
    return Shard(np.asarray(data.data, dtype=np.float32) / 16.0, np.asarray(data.target, dtype=np.int64))


def _test_indices(y: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """A stratified sample of ``fraction`` of every label (at least one each)."""
    chosen = []
    for label in range(CLASSES):
        idx = np.flatnonzero(y == label)
        take = max(1, round(len(idx) * fraction))
        chosen.append(rng.permutation(idx)[:take])
    return np.sort(np.concatenate(chosen))


def dirichlet_parts(y: np.ndarray, nodes: int, alpha: float, rng: np.random.Generator,
                    min_per_node: int = 10) -> list[np.ndarray]:
    """Indices into ``y`` for each node, shared out label by label with Dirichlet(alpha) proportions.

    Raises ValueError when ``alpha <= 0`` or when no draw in 100 gives every node ``min_per_node``.
    """
    if alpha <= 0:
        raise ValueError(f"alpha must be > 0, not {alpha}")
    for _ in range(100):
        parts: list[list[int]] = [[] for _ in range(nodes)]
        for label in range(CLASSES):
            idx = rng.permutation(np.flatnonzero(y == label))
            cuts = (np.cumsum(rng.dirichlet(np.full(nodes, alpha))) * len(idx)).astype(int)[:-1]
            for node, piece in enumerate(np.split(idx, cuts)):
                parts[node].extend(piece.tolist())
        if min(len(p) for p in parts) >= min_per_node:
            return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]
    raise ValueError(f"no Dirichlet({alpha}) draw gave each of {nodes} nodes {min_per_node} samples; "
                     "raise alpha or use fewer nodes")


def split(data: Shard, nodes: int, *, alpha: float | None = None, seed: int = 0,
          test_fraction: float = 0.2) -> Split:
    """Hold out ``test_fraction`` (stratified), then share the rest among ``nodes`` (IID when
    ``alpha`` is None, else Dirichlet(alpha) over labels). Deterministic for ``seed``.

    Raises ValueError for ``nodes < 1``, a fraction outside (0, 1) or more nodes than samples.
    """
    if nodes < 1:
        raise ValueError(f"nodes must be at least 1, not {nodes}")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be within (0, 1), not {test_fraction}")
    rng = np.random.default_rng(seed)
    test_idx = _test_indices(data.y, test_fraction, rng)
    rest = np.setdiff1d(np.arange(len(data.y)), test_idx)
    if nodes > len(rest):
        raise ValueError(f"{nodes} nodes but only {len(rest)} training samples")
    if alpha is None:
        parts = np.array_split(rng.permutation(rest), nodes)
        parts = [np.sort(p) for p in parts]
    else:
        parts = [rest[p] for p in dirichlet_parts(data.y[rest], nodes, alpha, rng)]
    return Split(Shard(data.x[test_idx], data.y[test_idx]), [Shard(data.x[p], data.y[p]) for p in parts])


def save_shard(shard: Shard, path: Path) -> Path:
    """Write ``shard`` as ``.npz`` (arrays ``x``, ``y``), creating the directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, x=shard.x, y=shard.y)
    return path


def load_shard(path: Path) -> Shard:
    """Read a shard written by :func:`save_shard`; ValueError naming the file when it is not one."""
    try:
        with np.load(path) as f:
            x, y = np.asarray(f["x"], dtype=np.float32), np.asarray(f["y"], dtype=np.int64)
    except (OSError, KeyError, ValueError) as exc:
        raise ValueError(f"{path}: not a data shard with arrays x and y ({exc})") from None
    if x.ndim != 2 or x.shape[1] != FEATURES or len(x) != len(y):
        raise ValueError(f"{path}: x must be [n, {FEATURES}] and y [n], got {x.shape} and {y.shape}")
    return Shard(x, y)


def write_split(result: Split, out: Path, node_dirs: Sequence[Path] | None = None) -> list[Path]:
    """``out/test.npz`` and, in every node directory (default ``out/node-<i>``), the node's
    ``digits.npz`` and a copy of ``test.npz``: the Flower server may be placed on any node and
    evaluates on the held-out split in its own data directory (none: accuracy is not measured).
    Returns the nodes' ``digits.npz`` files. ValueError when ``node_dirs`` does not have one
    entry per shard."""
    count = len(result.shards)
    dirs = list(node_dirs) if node_dirs is not None else [out / f"node-{i}" for i in range(count)]
    if len(dirs) != len(result.shards):
        raise ValueError(f"{len(result.shards)} shards but {len(dirs)} node directories")
    save_shard(result.test, out / TEST_FILE)
    files = []
    for shard, node_dir in zip(result.shards, dirs, strict=True):
        files.append(save_shard(shard, node_dir / DATA_FILE))
        save_shard(result.test, node_dir / TEST_FILE)
    return files
