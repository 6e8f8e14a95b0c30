"""MobileNetV2 (width 1.0, 1000 classes) in plain torch.nn, with deterministic weights and ONNX export.

Why it exists: torchvision does not work on our machines, yet MobileNetV2 is the reference model of
the partitioning literature (and of AMP4EC). Weights are random but reproducible from a seed;
latency, FLOPs and cut sizes do not depend on the weight values, so this is enough for
scheduling, partitioning and correctness tests. Accuracy is never measured with it.

torch is imported lazily inside the functions so that ``import model_zoo`` works without torch
(node engines and most tests never need it).
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import os
import warnings
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover - typing only
    import torch

logger = logging.getLogger(__name__)

INPUT_NAME = "input"
OUTPUT_NAME = "output"
INPUT_SHAPE = (1, 3, 224, 224)
OPSET = 18

# (expand ratio t, output channels c, repeats n, first stride s) — Sandler et al. 2018, Table 2.
_INVERTED_RESIDUAL_SETTING = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


def _make_divisible(value: float, divisor: int = 8) -> int:
    """Round channels to a multiple of ``divisor`` the way the reference implementation does."""
    new_value = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if new_value < 0.9 * value:
        new_value += divisor
    return new_value


def build_model(seed: int = 0, num_classes: int = 1000) -> torch.nn.Module:
    """Return MobileNetV2 in eval mode with weights and BatchNorm statistics drawn from ``seed``.

    The BatchNorm running mean/var and affine parameters are set to non-trivial deterministic
    values (not the 0/1 defaults), so exported graphs compute something non-degenerate and
    numerical comparisons are meaningful.
    """
    import torch
    from torch import nn

    class ConvBNReLU(nn.Sequential):
        def __init__(self, cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1) -> None:
            padding = (kernel - 1) // 2
            super().__init__(
                nn.Conv2d(cin, cout, kernel, stride, padding, groups=groups, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU6(inplace=False),
            )

    class InvertedResidual(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int, expand_ratio: int) -> None:
            super().__init__()
            hidden = round(cin * expand_ratio)
            self.use_res_connect = stride == 1 and cin == cout
            layers: list[nn.Module] = []
            if expand_ratio != 1:
                layers.append(ConvBNReLU(cin, hidden, kernel=1))
            layers.extend(
                [
                    ConvBNReLU(hidden, hidden, stride=stride, groups=hidden),
                    nn.Conv2d(hidden, cout, 1, 1, 0, bias=False),
                    nn.BatchNorm2d(cout),
                ]
            )
            self.conv = nn.Sequential(*layers)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if self.use_res_connect:
                return x + self.conv(x)
            return self.conv(x)

    class MobileNetV2(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            input_channel = _make_divisible(32)
            last_channel = _make_divisible(1280)
            features: list[nn.Module] = [ConvBNReLU(3, input_channel, stride=2)]
            for t, c, n, s in _INVERTED_RESIDUAL_SETTING:
                output_channel = _make_divisible(c)
                for i in range(n):
                    features.append(InvertedResidual(input_channel, output_channel, s if i == 0 else 1, t))
                    input_channel = output_channel
            features.append(ConvBNReLU(input_channel, last_channel, kernel=1))
            self.features = nn.Sequential(*features)
            self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(last_channel, num_classes))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.features(x)
            x = nn.functional.adaptive_avg_pool2d(x, (1, 1))
            x = torch.flatten(x, 1)
            return self.classifier(x)

    torch.manual_seed(seed)
    model = MobileNetV2()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d):
                channels = module.num_features
                module.weight.copy_(torch.empty(channels).uniform_(0.5, 1.5))
                module.bias.copy_(torch.empty(channels).uniform_(-0.2, 0.2))
                mean, var = module.running_mean, module.running_var
                if mean is None or var is None:  # only without track_running_stats, which we never build
                    raise RuntimeError("BatchNorm2d without running statistics")
                mean.copy_(torch.empty(channels).uniform_(-0.1, 0.1))
                var.copy_(torch.empty(channels).uniform_(0.5, 2.0))
            elif isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, 0.0, 0.01)
                nn.init.zeros_(module.bias)
    model.eval()
    return model


def example_input(seed: int = 0) -> torch.Tensor:
    """A deterministic 1x3x224x224 float32 input (standard normal from ``seed``)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    return torch.randn(*INPUT_SHAPE, generator=generator)


def export_onnx(path: str | os.PathLike[str] | None = None, seed: int = 0) -> bytes:
    """Export MobileNetV2 to a single self-contained ONNX file and return its bytes.

    Uses the dynamo exporter (the legacy one was silently wrong on transformers, see
    pitfalls.md). The exporter may put weights into external data; we load everything into the
    ModelProto and serialise it as one message, so the result never depends on side files.
    When ``path`` is given the bytes are also written there.
    """
    import onnx
    import torch

    model = build_model(seed)
    dummy = example_input(seed)
    # The exporter logs one warning per torchvision op it cannot register; torchvision is
    # absent on purpose (see pitfalls.md), so that noise says nothing about this model.
    exporter_log = logging.getLogger("torch.onnx._internal.exporter._registration")
    previous_level = exporter_log.level
    exporter_log.setLevel(logging.ERROR)
    try:
        # onnxscript's optimiser prints one line per de-duplicated initializer to stdout.
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            # torch's own exporter internals emit deprecation noise that callers cannot act on.
            warnings.simplefilter("ignore", FutureWarning)
            program = torch.onnx.export(
                model,
                (dummy,),
                dynamo=True,
                opset_version=OPSET,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                external_data=False,
                verbose=False,
            )
            proto: Any = program.model_proto  # type: ignore[union-attr]  # optimised lazily, and noisily
    finally:
        exporter_log.setLevel(previous_level)
    data = proto.SerializeToString()
    onnx.checker.check_model(onnx.load_from_string(data))
    if path is not None:
        with open(path, "wb") as handle:
            handle.write(data)
    logger.info("exported mobilenet_v2 seed=%d: %d bytes, %d nodes", seed, len(data), len(proto.graph.node))
    return data


@functools.lru_cache(maxsize=2)
def exported_onnx(seed: int = 0) -> bytes:
    """``export_onnx(None, seed)`` memoised per process, so test modules share one ~10 s export."""
    return export_onnx(None, seed)


def torch_reference_output(seed: int = 0, input_seed: int = 0) -> Any:
    """The torch model's output (numpy array) on ``example_input(input_seed)``, for export checks."""
    import torch

    model = build_model(seed)
    with torch.no_grad():
        return model(example_input(input_seed)).numpy()


__all__ = [
    "INPUT_NAME",
    "INPUT_SHAPE",
    "OUTPUT_NAME",
    "build_model",
    "example_input",
    "export_onnx",
    "exported_onnx",
    "torch_reference_output",
]
