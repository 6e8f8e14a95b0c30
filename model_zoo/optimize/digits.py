"""A small CNN on scikit-learn's digits: the data split, the model, its training.

Data: ``sklearn.datasets.load_digits`` (1,797 images of 8×8 pixels, values 0..16, ten classes),
scaled to [0, 1] and shaped [N, 1, 8, 8] float32. The held-out split is stratified and seeded
(``test_size`` 0.25 → 1,347 train / 450 test), so every variant is scored on the same 450
images. Calibration for int8 draws from the *training* split only.

Model (:class:`DigitsCNN`): conv3×3(1→c1) · ReLU · conv3×3(c1→c2) · ReLU · maxpool 2 →
[c2, 4, 4] · flatten · linear(16·c2 → hidden) · ReLU · linear(hidden → 10). Channel widths are
parameters, so a pruned model is the same class with fewer channels, and a student is the same
class with narrower layers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from sklearn.datasets import load_digits  # type: ignore[import-untyped]
from sklearn.model_selection import train_test_split  # type: ignore[import-untyped]
from torch import nn

from model_zoo.optimize.export import export_onnx

DATASET = "sklearn.load_digits"
INPUT_SHAPE = (1, 1, 8, 8)


@dataclass(frozen=True)
class DigitsSplit:
    """Stratified, seeded split. ``x_*``: [N, 1, 8, 8] float32 in [0, 1]; ``y_*``: [N] int64."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    seed: int

    @property
    def name(self) -> str:
        """How lineage and metrics name the evaluation data."""
        return f"{DATASET}(test_size=0.25,stratified,seed={self.seed})"

    def calibration(self, count: int) -> np.ndarray:
        """The first ``count`` training images (a seeded shuffle already), [count, 1, 8, 8]."""
        return self.x_train[:count]


def load_split(seed: int = 0, test_size: float = 0.25) -> DigitsSplit:
    """Load the digits and split them (stratified by label, shuffled with ``seed``)."""
    digits = load_digits()
    x = (digits.images.astype(np.float32) / 16.0)[:, None, :, :]
    y = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=test_size, stratify=y,
                                                        random_state=seed)
    return DigitsSplit(x_train, y_train, x_test, y_test, seed)


class DigitsCNN(nn.Module):
    """See the module docstring; ``forward``: [N, 1, 8, 8] → logits [N, 10]."""

    def __init__(self, c1: int = 32, c2: int = 64, hidden: int = 128) -> None:
        super().__init__()
        self.c1, self.c2, self.hidden = c1, c2, hidden
        self.conv1 = nn.Conv2d(1, c1, 3, padding=1)
        self.conv2 = nn.Conv2d(c1, c2, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(c2 * 16, hidden)
        self.fc2 = nn.Linear(hidden, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv1(x))
        x = self.pool(torch.relu(self.conv2(x)))
        return self.fc2(torch.relu(self.fc1(torch.flatten(x, 1))))

    def widths(self) -> dict[str, int]:
        """The constructor's arguments (what lineage records as the architecture)."""
        return {"c1": self.c1, "c2": self.c2, "hidden": self.hidden}


def parameter_count(module: nn.Module) -> int:
    """Number of scalar parameters (trainable or not)."""
    return sum(p.numel() for p in module.parameters())


# loss(model, x batch, y batch) -> scalar loss tensor
LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


def cross_entropy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Plain supervised loss."""
    return nn.functional.cross_entropy(model(x), y)


def fit(model: nn.Module, split: DigitsSplit, *, epochs: int, seed: int, lr: float = 3e-3,
        batch_size: int = 64, loss_fn: LossFn = cross_entropy, threads: int = 1) -> nn.Module:
    """Train ``model`` in place on the training split (Adam, shuffled mini-batches from ``seed``).

    Runs on ``threads`` torch threads (restored afterwards): these models are too small to gain
    from more, and on a busy two-core host two threads made training 6× slower (23.7 s against
    3.7 s for 12 epochs, measured under load). Returns the model in eval mode. Deterministic for
    a seed on one machine (torch's CPU kernels).
    """
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        torch.manual_seed(seed)
        generator = torch.Generator().manual_seed(seed)
        x = torch.from_numpy(split.x_train)
        y = torch.from_numpy(split.y_train)
        optimiser = torch.optim.Adam(model.parameters(), lr=lr)
        model.train()
        for _ in range(epochs):
            order = torch.randperm(len(x), generator=generator)
            for start in range(0, len(x), batch_size):
                idx = order[start:start + batch_size]
                optimiser.zero_grad()
                loss_fn(model, x[idx], y[idx]).backward()
                optimiser.step()
    finally:
        torch.set_num_threads(previous_threads)
    return model.eval()


def train_digits_cnn(split: DigitsSplit, *, epochs: int = 30, seed: int = 0,
                     widths: dict[str, int] | None = None) -> DigitsCNN:
    """A freshly initialised (from ``seed``) :class:`DigitsCNN` trained for ``epochs``."""
    torch.manual_seed(seed)
    model = DigitsCNN(**(widths or {}))
    fit(model, split, epochs=epochs, seed=seed)
    return model


def example_input() -> torch.Tensor:
    """A zero batch-1 input, [1, 1, 8, 8], for export."""
    return torch.zeros(INPUT_SHAPE, dtype=torch.float32)


def digits_cnn_from_onnx(onnx_bytes: bytes) -> DigitsCNN:
    """Rebuild the torch :class:`DigitsCNN` an ONNX file was exported from (pruning and distillation
    need torch weights; the registry keeps only ONNX).

    The dynamo exporter names initialisers after the module's parameters (``conv1.weight`` …);
    widths are read from their shapes. Raises ValueError naming what is missing or inconsistent
    when the file was not exported from a DigitsCNN.
    """
    model = onnx.load_from_string(onnx_bytes)
    weights = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    names = [f"{layer}.{kind}" for layer in ("conv1", "conv2", "fc1", "fc2") for kind in ("weight", "bias")]
    missing = [name for name in names if name not in weights]
    if missing:
        raise ValueError(f"not a DigitsCNN export: initialisers {missing} are missing")
    c1, c2, hidden = (int(weights["conv1.weight"].shape[0]), int(weights["conv2.weight"].shape[0]),
                      int(weights["fc1.weight"].shape[0]))
    rebuilt = DigitsCNN(c1=c1, c2=c2, hidden=hidden)
    try:
        rebuilt.load_state_dict({name: torch.from_numpy(weights[name].copy()) for name in names})
    except RuntimeError as exc:
        raise ValueError(f"not a DigitsCNN export: {' '.join(str(exc).split())}") from None
    return rebuilt.eval()


def digits_cnn_onnx(seed: int = 0, epochs: int = 30) -> bytes:
    """The built-in ``digits_cnn``: trained on the seeded split and exported (a few seconds)."""
    return export_onnx(train_digits_cnn(load_split(seed), epochs=epochs, seed=seed), example_input())
