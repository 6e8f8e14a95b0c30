"""Built-in models for demos and tests, exported to ONNX on demand.

Importing this package never imports torch: torch is only needed (lazily) to export the
torch-defined models, and the node engine / most tests use the pure-ONNX ``tiny`` model.

The cache helper exists so the demo does not pay a ~10 s export on every run; cached files are
keyed only by model name, so delete the cache directory after changing a model definition.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

logger = logging.getLogger(__name__)


def _mobilenet_v2() -> bytes:
    from model_zoo.mobilenet_v2 import export_onnx

    return export_onnx(None, seed=0)


def _tiny_dag() -> bytes:
    from model_zoo.tiny import tiny_dag_bytes

    return tiny_dag_bytes(seed=0)


def _digits_cnn() -> bytes:
    from model_zoo.optimize.digits import digits_cnn_onnx

    return digits_cnn_onnx(seed=0)


def _digits_mlp() -> bytes:
    from node_engine.training.model import new_model, to_onnx

    return to_onnx(new_model(seed=0))


# name -> zero-argument builder returning serialised, self-contained ONNX bytes.
BUILTIN_MODELS: dict[str, Callable[[], bytes]] = {
    "mobilenet_v2": _mobilenet_v2,
    "tiny_dag": _tiny_dag,
    "digits_cnn": _digits_cnn,  # trained on scikit-learn's digits (model_zoo.optimize), a few seconds
    # untrained: the starting point federated training accepts (node_engine.training.model.DigitsMlp)
    "digits_mlp": _digits_mlp,
}


def build_onnx(name: str) -> bytes:
    """Build the named built-in model; unknown names raise KeyError listing the known ones."""
    try:
        builder = BUILTIN_MODELS[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; known: {sorted(BUILTIN_MODELS)}") from None
    return builder()


def cached_onnx(name: str, cache_dir: str | os.PathLike[str]) -> bytes:
    """Return ``<cache_dir>/<name>.onnx``, building and writing it first if absent.

    The write goes through a temporary file and an atomic rename, so a crash or a concurrent
    caller never leaves a truncated model behind.
    """
    if name not in BUILTIN_MODELS:
        raise KeyError(f"unknown model {name!r}; known: {sorted(BUILTIN_MODELS)}")
    directory = Path(cache_dir)
    target = directory / f"{name}.onnx"
    if target.is_file():
        logger.debug("model cache hit: %s", target)
        return target.read_bytes()
    data = build_onnx(name)
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / f".{name}.onnx.{os.getpid()}.tmp"
    tmp.write_bytes(data)
    os.replace(tmp, target)
    logger.info("cached model %s (%d bytes) at %s", name, len(data), target)
    return data


__all__ = ["BUILTIN_MODELS", "build_onnx", "cached_onnx"]
