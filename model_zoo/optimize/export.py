"""torch module → one self-contained ONNX file, checked against torch before it is returned.

torch's dynamo exporter (``dynamo=True``; the legacy exporter silently mis-exported a
transformer here, see docs/pitfalls) may write the weights to ``<name>.onnx.data``; the file is
re-read with its external data and serialised as one file, which is what the registry stores.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

logger = logging.getLogger(__name__)

INPUT_NAME = "input"
OUTPUT_NAME = "logits"


class ExportMismatch(RuntimeError):
    """The exported graph's outputs differ from torch's by more than the tolerance."""


def export_onnx(module: torch.nn.Module, example: torch.Tensor, *, atol: float = 1e-4) -> bytes:
    """Export ``module`` (put in eval mode) for inputs shaped like ``example`` ([N, ...] float32).

    The batch dimension stays fixed at ``example``'s (batch 1 is what latency is measured at;
    accuracy runs feed one sample at a time). Returns serialised ONNX with every weight inside.
    Raises :class:`ExportMismatch` when onnxruntime's output on ``example`` differs from torch's
    by more than ``atol`` (absolute, in logits).
    """
    module.eval()
    with torch.no_grad():
        expected = module(example).numpy()
    with tempfile.TemporaryDirectory(prefix="treeline-export-") as tmp:
        path = Path(tmp) / "model.onnx"
        program = torch.onnx.export(module, (example,), dynamo=True, input_names=[INPUT_NAME],
                                    output_names=[OUTPUT_NAME], verbose=False)
        if program is None:  # pragma: no cover - only when dynamo=False
            raise ExportMismatch("the exporter returned no program")
        program.save(str(path))
        proto = onnx.load(str(path), load_external_data=True)
    data = proto.SerializeToString()
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    got = session.run(None, {INPUT_NAME: example.numpy()})[0]
    diff = float(np.max(np.abs(got - expected)))
    if diff > atol:
        raise ExportMismatch(f"onnxruntime differs from torch by {diff:.3g} > {atol:g}")
    logger.info("exported %s: %d bytes, max |ort - torch| = %.3g", type(module).__name__, len(data), diff)
    return data
