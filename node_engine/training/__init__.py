"""Training at the edge on a node: Flower server and client processes (the ``train`` extra).

Nothing here is imported by the inference-only node: :func:`missing_extra` tells, without
importing torch or flwr, whether this install can train (``importlib.util.find_spec``); the
handler (:mod:`.handler`) refuses a train command with that reason otherwise.
"""

from __future__ import annotations

import importlib.util

TRAIN_PACKAGES = ("flwr", "torch")


def missing_extra() -> str:
    """'' when flwr and torch are importable; otherwise the reason a node gives when refusing."""
    missing = [name for name in TRAIN_PACKAGES if importlib.util.find_spec(name) is None]
    if not missing:
        return ""
    return (f"this node cannot train: {', '.join(missing)} not installed "
            "(install the training extra: pip install 'treeline[train]')")
