"""What a model must look like for the Flower client to train it: the digits MLP's signature.

The federated client (``node_engine/training/model.py``, torch) trains one architecture:
``x`` float32 [N, 64] -> logits [N, 10]. The root never imports torch, yet must refuse a starting
model of another shape before a job starts (it would fail only at run time, on the nodes): it
compares the registry version's signature (:func:`root_orchestrator.onnx_signature.extract_signature`:
``{inputs: [{name, dtype, shape}], outputs: [...]}``) with the constants here. This module is the
one definition of that signature; it imports nothing beyond the standard library.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

TRAINABLE_FEATURES = 64   # input features per sample (8x8 digits, flattened)
TRAINABLE_CLASSES = 10    # output logits per sample
TRAINABLE_DTYPE = "float32"
TRAINABLE_BUILTIN = "digits_mlp"  # `treeline model register --builtin digits_mlp` registers one


def shape_text(shape: Any) -> str:
    """``[N,1,8,8]``: symbolic or unknown dimensions shown as ``N``; ``[?]`` when unknown."""
    if not isinstance(shape, Sequence) or isinstance(shape, str):
        return "[?]"
    dims = (str(d) if isinstance(d, int) and not isinstance(d, bool) else "N" for d in shape)
    return "[" + ",".join(dims) + "]"


def expected_text() -> str:
    """``float32 [N,64] -> [N,10]``."""
    return f"{TRAINABLE_DTYPE} [N,{TRAINABLE_FEATURES}] -> [N,{TRAINABLE_CLASSES}]"


def _fits(tensors: Any, width: int, dtype: str | None) -> bool:
    if not isinstance(tensors, Sequence) or len(tensors) != 1 or not isinstance(tensors[0], Mapping):
        return False
    shape = tensors[0].get("shape")
    return (isinstance(shape, Sequence) and len(shape) == 2 and shape[1] == width
            and (dtype is None or tensors[0].get("dtype") == dtype))


def untrainable_reason(signature: Mapping[str, Any] | None) -> str:
    """``""`` when ``signature`` is the trainable one (one float32 [N,64] input, one [N,10]
    output); else what it is and what was expected, e.g.
    ``input [N,1,8,8], expected float32 [N,64] -> [N,10]``. Pure."""
    signature = signature or {}
    inputs, outputs = signature.get("inputs"), signature.get("outputs")
    if _fits(inputs, TRAINABLE_FEATURES, TRAINABLE_DTYPE) and _fits(outputs, TRAINABLE_CLASSES, None):
        return ""
    def side(what: str, tensors: Any) -> str:
        if not isinstance(tensors, Sequence) or not tensors:
            return f"no {what}s"
        shown = [f"{t.get('dtype') or '?'} {shape_text(t.get('shape'))}" if isinstance(t, Mapping) else "?"
                 for t in tensors]
        return f"{what}{'s' if len(shown) > 1 else ''} {', '.join(shown)}"
    if _fits(inputs, TRAINABLE_FEATURES, TRAINABLE_DTYPE):
        found = side("output", outputs)
    elif isinstance(inputs, Sequence) and len(inputs) == 1 and isinstance(inputs[0], Mapping) \
            and inputs[0].get("dtype") == TRAINABLE_DTYPE:
        found = f"input {shape_text(inputs[0].get('shape'))}"
    else:
        found = side("input", inputs)
    return f"{found}, expected {expected_text()}"
