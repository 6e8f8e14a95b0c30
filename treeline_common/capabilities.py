"""What a node engine can run, advertised as reserved labels in its registration.

Contract (docs/contracts.md, "Node capabilities"): a node engine lists its capabilities as
labels ``treeline:<capability>`` in the ``labels`` of ``POST /api/node/register``. Every
engine of this version says ``treeline:infer`` (it serves ONNX stages); one with the ``train``
extra installed (flwr and torch, ``pip install 'treeline[train]'``) also says ``treeline:train``,
and one whose data directory holds the held-out split at start says ``treeline:eval`` (the
training placement prefers it for the Flower server, which evaluates there).

Why labels rather than a new registration field: labels already flow unchanged from the
registration into the cluster's node documents, its ``GET /api/nodes`` answer and the
scheduler's :class:`~ml_scheduler.snapshot.NodeView`, so no validator or store changes.

A node with no ``treeline:`` label at all did not advertise (a node engine older than this
contract, a simulated node, a document written by hand): its capabilities are unknown
(``None``), and the training placement does not filter it (the node itself refuses a train
command it cannot run, with its reason).
"""

from __future__ import annotations

from collections.abc import Iterable

CAPABILITY_PREFIX = "treeline:"
INFER = "infer"
TRAIN = "train"
EVAL = "eval"  # holds the held-out split (``<data dir>/test.npz``): a Flower server there measures accuracy
TRAIN_LABEL = CAPABILITY_PREFIX + TRAIN
HELD_OUT_FILE = "test.npz"  # what ``treeline data split`` writes into every node directory


def capability_labels(can_train: bool, can_evaluate: bool = False) -> list[str]:
    """The labels a node engine advertises: ``treeline:infer``, plus ``treeline:train`` if
    ``can_train`` and ``treeline:eval`` if ``can_evaluate`` (it holds :data:`HELD_OUT_FILE`)."""
    return [CAPABILITY_PREFIX + INFER, *([TRAIN_LABEL] if can_train else []),
            *([CAPABILITY_PREFIX + EVAL] if can_evaluate else [])]


def capabilities_of(labels: Iterable[str]) -> tuple[str, ...] | None:
    """The capabilities named by ``labels`` (sorted, unique), or None when none is advertised.

    ``("infer",)`` means "advertised, cannot train"; None means "did not say" (module docstring).
    """
    found = {str(label)[len(CAPABILITY_PREFIX):] for label in labels
             if str(label).startswith(CAPABILITY_PREFIX) and len(str(label)) > len(CAPABILITY_PREFIX)}
    return tuple(sorted(found)) if found else None
