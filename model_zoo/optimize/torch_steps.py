"""torch-level steps on :class:`~model_zoo.optimize.digits.DigitsCNN`: pruning and distillation.

Structured pruning: ``torch.nn.utils.prune.ln_structured`` (n=1, the L1 norm, dim 0) masks the
``amount`` share of each conv layer's output channels with the smallest L1 norm. A mask alone
leaves the tensors (and the ONNX file, and the FLOPs) as large as before, so the kept channels
are then copied into a *narrower* DigitsCNN: conv1's kept outputs, conv2's matching inputs and
kept outputs, fc1's matching input features (channel c owns features 16·c … 16·c+15 of the
flattened [c2, 4, 4] map). Biases of removed channels go with them, so the narrow model is not
exactly the masked one; the fine-tuning that follows retrains it on the training split.

Distillation (Hinton et al., 2015): the student minimises
``alpha · T² · KL(softmax(teacher/T) ‖ softmax(student/T)) + (1 − alpha) · CE(student, y)``;
the T² keeps the soft term's gradient scale independent of the temperature.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn.utils import prune

from model_zoo.optimize.digits import DigitsCNN, DigitsSplit, fit


def _kept_channels(conv: nn.Conv2d, amount: float) -> torch.Tensor:
    """Indices (ascending) of the output channels L1 structured pruning keeps in ``conv`` (the mask
    ``prune.ln_structured(conv, "weight", amount, n=1, dim=0)`` would install, computed without
    installing it, so ``conv`` is left as it is)."""
    weight = conv.weight.detach()
    mask = prune.LnStructured(amount, n=1, dim=0).compute_mask(weight, default_mask=torch.ones_like(weight))
    return torch.nonzero(mask.flatten(1).sum(dim=1) > 0).flatten()


def _bias(layer: nn.Conv2d | nn.Linear) -> torch.Tensor:
    if layer.bias is None:  # DigitsCNN's layers all have one
        raise ValueError(f"{layer}: a bias is expected")
    return layer.bias


def prune_channels(model: DigitsCNN, amount: float) -> DigitsCNN:
    """A narrower copy of ``model`` without the ``amount`` share (0 < amount < 1) of each conv
    layer's channels of smallest L1 norm. ``model`` is left unchanged. Not fine-tuned."""
    if not 0.0 < amount < 1.0:
        raise ValueError(f"amount: must be in (0, 1), got {amount}")
    keep1 = _kept_channels(model.conv1, amount)
    keep2 = _kept_channels(model.conv2, amount)
    small = DigitsCNN(c1=len(keep1), c2=len(keep2), hidden=model.hidden)
    features = (keep2[:, None] * 16 + torch.arange(16)[None, :]).flatten()
    with torch.no_grad():
        small.conv1.weight.copy_(model.conv1.weight[keep1])
        _bias(small.conv1).copy_(_bias(model.conv1)[keep1])
        small.conv2.weight.copy_(model.conv2.weight[keep2][:, keep1])
        _bias(small.conv2).copy_(_bias(model.conv2)[keep2])
        small.fc1.weight.copy_(model.fc1.weight[:, features])
        _bias(small.fc1).copy_(_bias(model.fc1))
        small.fc2.load_state_dict(model.fc2.state_dict())
    return small.eval()


def prune_and_finetune(model: DigitsCNN, split: DigitsSplit, *, amount: float = 0.5,
                       epochs: int = 10, seed: int = 0) -> tuple[DigitsCNN, dict[str, Any]]:
    """:func:`prune_channels` then ``epochs`` of fine-tuning (lr 1e-3); returns the model and the
    parameters lineage records."""
    small = prune_channels(model, amount)
    fit(small, split, epochs=epochs, seed=seed, lr=1e-3)
    return small, {"method": "ln_structured", "n": 1, "dim": 0, "amount": amount,
                   "layers": ["conv1", "conv2"], "channels_removed_physically": True,
                   "finetune_epochs": epochs, "widths": small.widths()}


def distill(teacher: nn.Module, split: DigitsSplit, *, widths: dict[str, int] | None = None,
            temperature: float = 4.0, alpha: float = 0.7, epochs: int = 30,
            seed: int = 0) -> tuple[DigitsCNN, dict[str, Any]]:
    """Train a fresh (seeded) student DigitsCNN of ``widths`` (default c1 8, c2 16, hidden 32)
    against ``teacher``'s soft labels; returns it with the parameters lineage records."""
    if temperature <= 0 or not 0.0 <= alpha <= 1.0:
        raise ValueError("temperature must be > 0 and alpha in [0, 1]")
    widths = widths or {"c1": 8, "c2": 16, "hidden": 32}
    teacher.eval()

    def loss(student: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            soft_targets = torch.log_softmax(teacher(x) / temperature, dim=1)
        logits = student(x)
        soft = nn.functional.kl_div(torch.log_softmax(logits / temperature, dim=1), soft_targets,
                                    reduction="batchmean", log_target=True)
        return alpha * temperature ** 2 * soft + (1.0 - alpha) * nn.functional.cross_entropy(logits, y)

    torch.manual_seed(seed)
    student = DigitsCNN(**widths)
    fit(student, split, epochs=epochs, seed=seed, loss_fn=loss)
    return student, {"temperature": temperature, "alpha": alpha, "loss": "alpha*T^2*KL + (1-alpha)*CE",
                     "epochs": epochs, "student_widths": widths}
