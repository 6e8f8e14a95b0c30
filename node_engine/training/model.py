"""The small classifier federated jobs train, and its conversions (torch <-> numpy <-> ONNX).

``DigitsMlp``: ``x`` float32 [N, 64] -> Linear(64, hidden) -> ReLU -> Linear(hidden, 10) -> logits
[N, 10]. Its parameters, in :meth:`torch.nn.Module.state_dict` order, are the list of numpy
arrays Flower aggregates: ``[w1 (hidden, 64), b1 (hidden), w2 (10, hidden), b2 (10)]``. The ONNX
export keeps those names as initializers (``fc1.weight``, ...), so a registered version is read
back into the same parameters (:func:`parameters_from_onnx`): that is how a job starts from a
registry version and how a result becomes the next job's parent.

Needs the ``train`` extra (torch); the node's inference-only install never imports this module.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn

from treeline_common.trainable import TRAINABLE_CLASSES, TRAINABLE_FEATURES

FEATURES, CLASSES, HIDDEN = TRAINABLE_FEATURES, TRAINABLE_CLASSES, 32  # the signature the root admits
INPUT_NAME, OUTPUT_NAME = "x", "logits"


class DigitsMlp(nn.Module):
    """64 -> hidden -> 10; ``head`` is the last layer (the part transfer learning trains)."""

    def __init__(self, hidden: int = HIDDEN) -> None:
        super().__init__()
        self.fc1 = nn.Linear(FEATURES, hidden)
        self.head = nn.Linear(hidden, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.fc1(x)))


def new_model(seed: int = 0) -> DigitsMlp:
    """A freshly initialised model (deterministic for ``seed``)."""
    torch.manual_seed(seed)
    return DigitsMlp()


def get_parameters(model: nn.Module) -> list[np.ndarray]:
    """The parameters as float32 numpy arrays, in ``state_dict`` order."""
    return [t.detach().cpu().numpy().astype(np.float32, copy=True) for t in model.state_dict().values()]


def set_parameters(model: nn.Module, arrays: Sequence[np.ndarray]) -> None:
    """Load ``arrays`` (in ``state_dict`` order); ValueError when their count or shapes differ."""
    keys = list(model.state_dict())
    if len(arrays) != len(keys):
        raise ValueError(f"expected {len(keys)} parameter arrays, got {len(arrays)}")
    state = {}
    for key, array, current in zip(keys, arrays, model.state_dict().values(), strict=True):
        if tuple(array.shape) != tuple(current.shape):
            raise ValueError(f"parameter {key}: shape {tuple(array.shape)}, expected {tuple(current.shape)}")
        state[key] = torch.from_numpy(np.asarray(array, dtype=np.float32).copy())
    model.load_state_dict(state)


def freeze_body(model: DigitsMlp) -> None:
    """Transfer learning (``trainable: head``): only the head's parameters get gradients."""
    for p in model.fc1.parameters():
        p.requires_grad_(False)


def train(model: nn.Module, x: np.ndarray, y: np.ndarray, *, epochs: int, batch_size: int, lr: float,
          proximal_mu: float = 0.0, seed: int = 0) -> float:
    """Local SGD for ``epochs`` over (x [n, 64], y [n]); returns the mean training loss of the last epoch.

    With ``proximal_mu`` > 0 the FedProx term ``mu/2 · ||w - w_global||²`` is added (Li et al. 2020),
    ``w_global`` being the parameters the model held when called.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    global_params = [p.detach().clone() for p in params]
    optimizer = torch.optim.SGD(params, lr=lr)
    loss_fn = nn.CrossEntropyLoss()
    gen = torch.Generator().manual_seed(seed)
    xs, ys = torch.from_numpy(x), torch.from_numpy(y)
    model.train()
    last = 0.0
    for _ in range(epochs):
        order = torch.randperm(len(ys), generator=gen)
        total, count = 0.0, 0
        for start in range(0, len(ys), batch_size):
            idx = order[start:start + batch_size]
            optimizer.zero_grad()
            loss = loss_fn(model(xs[idx]), ys[idx])
            if proximal_mu > 0:
                pairs = zip(params, global_params, strict=True)
                loss = loss + proximal_mu / 2 * sum(((p - g) ** 2).sum() for p, g in pairs)
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(idx)
            count += len(idx)
        last = total / max(count, 1)
    return last


def evaluate(model: nn.Module, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(mean cross-entropy loss, accuracy in 0..1) on (x, y)."""
    model.eval()
    with torch.no_grad():
        logits = model(torch.from_numpy(x))
        loss = float(nn.functional.cross_entropy(logits, torch.from_numpy(y)))
        accuracy = float((logits.argmax(dim=1).numpy() == y).mean())
    return loss, accuracy


def to_onnx(model: nn.Module) -> bytes:
    """The model as one ONNX file (legacy exporter: a two-layer MLP needs no dynamo; batch axis dynamic).

    Initializers keep the ``state_dict`` names; checked against torch by the caller's tests.
    """
    model.eval()
    buffer = io.BytesIO()
    axes = {INPUT_NAME: {0: "N"}, OUTPUT_NAME: {0: "N"}}
    torch.onnx.export(model, (torch.zeros(1, FEATURES),), buffer,  # type: ignore[arg-type]
                      input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], dynamic_axes=axes,
                      opset_version=17, dynamo=False, do_constant_folding=False)
    return buffer.getvalue()


def parameters_from_onnx(data: bytes, names: Sequence[str]) -> list[np.ndarray]:
    """The initializers named ``names`` (a model's ``state_dict`` keys) from ONNX bytes;
    ValueError naming the first missing one (the version is not this architecture)."""
    graph = onnx.load_from_string(data).graph
    found = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    missing = [n for n in names if n not in found]
    if missing:
        raise ValueError(f"the starting model has no initializer {missing[0]!r}: not a DigitsMlp")
    return [np.asarray(found[n], dtype=np.float32) for n in names]
