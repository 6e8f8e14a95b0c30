"""``treeline data split digits``: scikit-learn's digits shared out into node data directories.

The held-out test split goes to ``OUT/test.npz``; every node gets ``digits.npz`` in its
directory (``OUT/node-<i>`` or each ``--node-dir``), the file a node engine labelled
``data:digits`` trains on (:mod:`node_engine.training`), and a copy of ``test.npz``: the Flower
server may land on any node and evaluates there. See
:mod:`model_zoo.federated` for the partition (IID, or Dirichlet(ALPHA) over labels).
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from treeline_cli.commands.common import verbose_option
from treeline_cli.errors import TreelineGroup, UsageError

DATASETS = ("digits",)


@click.group(cls=TreelineGroup)
def data() -> None:
    """Prepare local data sets for training at the edge."""


@data.command("split")
@click.argument("dataset", type=click.Choice(DATASETS))
@click.option("--nodes", type=click.IntRange(min=1, max=1000), required=True, help="how many node shares")
@click.option("--non-iid", "alpha", type=float, default=None, metavar="ALPHA",
              help="Dirichlet concentration over labels (0.1: very skewed; 100: near IID); default IID")
@click.option("--seed", type=int, default=0, show_default=True, help="the same seed gives the same split")
@click.option("--test-fraction", type=float, default=0.2, show_default=True,
              help="the held-out share kept aside for evaluation")
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), required=True, metavar="DIR",
              help="where test.npz (and node-<i>/ without --node-dir) go")
@click.option("--node-dir", "node_dirs", type=click.Path(path_type=Path, file_okay=False), multiple=True,
              metavar="DIR", help="a node's data directory (repeat once per node; default OUT/node-<i>)")
@click.option("--json", "as_json", is_flag=True, help="print the split as JSON")
@verbose_option
def split_command(dataset: str, nodes: int, alpha: float | None, seed: int, test_fraction: float, out: Path,
                  node_dirs: tuple[Path, ...], as_json: bool) -> None:
    """Split DATASET into a held-out test file and one share per node."""
    from model_zoo import federated  # numpy + scikit-learn only when the command runs

    if alpha is not None and alpha <= 0:
        raise UsageError(f"--non-iid must be > 0, not {alpha}", "try 0.5 (skewed) or 100 (near IID)")
    if node_dirs and len(node_dirs) != nodes:
        raise UsageError(f"--nodes {nodes} but {len(node_dirs)} --node-dir", "give one --node-dir per node")
    try:
        result = federated.split(federated.load_digits(), nodes, alpha=alpha, seed=seed,
                                 test_fraction=test_fraction)
        files = federated.write_split(result, out, node_dirs or None)
    except ValueError as exc:
        raise UsageError(str(exc), "check --nodes, --non-iid and --test-fraction") from None
    rows = [{"file": str(path), "samples": len(shard.y), "labels": shard.label_counts()}
            for path, shard in zip(files, result.shards, strict=True)]
    test_file = str(out / federated.TEST_FILE)
    partition = "iid" if alpha is None else f"dirichlet({alpha})"
    summary = {"dataset": dataset, "test": {"file": test_file, "samples": len(result.test.y)},
               "partition": partition, "seed": seed, "nodes": rows}
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    held_out = len(result.test.y)
    click.echo(f"{dataset}: {partition}, seed {seed}; held-out test: {held_out} samples in {test_file} "
               "(and copied into each node directory, for whichever node aggregates)")
    for row in rows:
        click.echo(f"  {row['file']}: {row['samples']} samples, per label {row['labels']}")
