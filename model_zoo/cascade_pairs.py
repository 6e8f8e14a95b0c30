"""Small/large model pairs for confidence cascades, with the probe set each is calibrated on.

- ``digits``: :mod:`model_zoo.digits_pair` (scikit-learn: a logistic regression and an MLP,
  seconds to build; the tests' and ``--quick``'s pair);
- ``digits-cnn``: the digits CNN (fp32, the teacher) and its distilled student (6.5 % of the
  parameters), trained as ``treeline model optimize --steps distill`` does (torch; tens of
  seconds on two cores);
- ``effnet``: EfficientNet-Lite0 fp32 from its wheel and its static int8 (QDQ, per-channel)
  variant, probed on scikit-learn's sample photographs (unlabelled: the large model's answers
  are the reference; torch and the EfficientNet wheels).

The torch-based builders import :mod:`model_zoo.optimize`'s modules when called, so importing
this module stays cheap (the end-to-end test uses only ``digits``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from model_zoo import digits_pair
from model_zoo.cascade_probes import Probe, digits_probe, sample_images_probe


@dataclass(frozen=True)
class CascadePair:
    """Two ONNX models taking the same input; ``probe``: the SLA's ``cascade.probe`` name."""

    key: str
    small: bytes
    large: bytes
    input_name: str
    output_name: str
    input_shape: tuple[int, ...]
    probe: str
    description: str

    def probe_set(self) -> Probe:
        """The probe set this pair is calibrated and measured on."""
        return digits_probe() if self.probe == "digits" else sample_images_probe()


def digits_sklearn() -> CascadePair:
    return CascadePair("digits", digits_pair.small_model(), digits_pair.large_model(), digits_pair.INPUT,
                       digits_pair.OUTPUT, tuple(digits_pair.INPUT_SHAPE), "digits",
                       "digits: logistic regression (edge) / MLP (cloud)")


def digits_cnn(epochs: int = 30) -> CascadePair:
    from model_zoo.optimize import digits, export, torch_steps  # torch: only for this pair

    split = digits.load_split(0)
    teacher = digits.train_digits_cnn(split, epochs=epochs, seed=0)
    student, _ = torch_steps.distill(teacher, split, epochs=epochs, seed=0)
    large = export.export_onnx(teacher, digits.example_input())
    small = export.export_onnx(student, digits.example_input())
    return CascadePair("digits-cnn", small, large, export.INPUT_NAME, export.OUTPUT_NAME, digits.INPUT_SHAPE,
                       "digits", "digits CNN: distilled student (edge) / fp32 teacher (cloud)")


def effnet() -> CascadePair:
    from model_zoo.optimize import effnet as lite0  # torch and the EfficientNet wheels: only here
    from model_zoo.optimize import export, onnx_steps

    large = export.export_onnx(lite0.load_model(), lite0.example_input(), atol=1e-3)
    small = onnx_steps.quantize_int8(large, lite0.calibration_inputs(), per_channel=True).onnx_bytes
    return CascadePair("effnet", small, large, export.INPUT_NAME, export.OUTPUT_NAME,
                       (1, 3, lite0.IMAGE_SIZE, lite0.IMAGE_SIZE), "sample_images",
                       "EfficientNet-Lite0: int8 (edge) / fp32 (cloud)")


PAIRS: dict[str, Callable[[], CascadePair]] = {"digits": digits_sklearn, "digits-cnn": digits_cnn,
                                                "effnet": effnet}
