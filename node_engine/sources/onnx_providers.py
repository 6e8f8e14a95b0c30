"""Accelerators as onnxruntime sees them: its available execution providers.

``onnxruntime.get_available_providers()`` lists the providers this onnxruntime build can use
(``onnxruntime-gpu`` lists CUDA even where the driver is missing: a provider that fails at
session creation falls back to CPU, so the list is what the build *offers*). Each known
accelerator provider becomes one :class:`Accelerator` named after the provider; the CPU,
XNNPACK and Azure (remote) providers are not accelerators. The source is present wherever
onnxruntime imports; a CPU-only build reports ``accelerators: []`` with the source ``ok``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from types import ModuleType

from node_engine.sources.base import Readings, SourceContext
from treeline_common.messages import Accelerator

PROVIDER_KINDS: dict[str, str] = {
    "CUDAExecutionProvider": "gpu",
    "TensorrtExecutionProvider": "gpu",
    "NvTensorRTRTXExecutionProvider": "gpu",
    "ROCMExecutionProvider": "gpu",
    "MIGraphXExecutionProvider": "gpu",
    "DmlExecutionProvider": "gpu",
    "WebGpuExecutionProvider": "gpu",
    "OpenVINOExecutionProvider": "npu",
    "CoreMLExecutionProvider": "npu",
    "QNNExecutionProvider": "npu",
    "NnapiExecutionProvider": "npu",
    "VitisAIExecutionProvider": "npu",
    "RknpuExecutionProvider": "npu",
    "CANNExecutionProvider": "npu",
}
"""Execution provider -> accelerator kind; providers not listed here are not accelerators."""


def import_onnxruntime() -> ModuleType:
    """The ``onnxruntime`` module (raises ImportError when not installed)."""
    return importlib.import_module("onnxruntime")


def accelerators_of(providers: list[str]) -> list[Accelerator]:
    """The accelerators among ``providers`` (onnxruntime's names), in onnxruntime's order."""
    return [Accelerator(kind=PROVIDER_KINDS[p], name=p) for p in providers if p in PROVIDER_KINDS]


class OnnxProvidersSource:
    """``accelerators``: one :class:`Accelerator` per accelerator execution provider."""

    name = "onnxruntime"
    replaced_when_emulated = True

    def __init__(self, context: SourceContext, load: Callable[[], ModuleType] = import_onnxruntime) -> None:
        self._context = context
        self._load = load
        self._accelerators: list[Accelerator] = []

    def probe(self) -> bool:
        try:
            ort = self._load()
        except ImportError:
            return False
        # The provider list of a loaded library does not change: read once.
        self._accelerators = accelerators_of(list(ort.get_available_providers()))
        return True

    def read(self) -> Readings:
        return {"accelerators": list(self._accelerators)}

    def close(self) -> None:
        self._accelerators = []
