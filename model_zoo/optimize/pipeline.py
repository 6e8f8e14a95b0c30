"""The optimisation steps in order, each a :class:`Variant` with lineage, then measured together.

``run_digits`` trains the digits CNN (or takes an exported one), derives the requested variants
(``int8``, ``fp16``, ``prune`` → ``pruned``, ``distill`` → ``distilled``) from the fp32 model,
then :func:`measure_variants` scores every variant in onnxruntime on the held-out split,
measures their p50 latencies interleaved on this CPU and picks a variant per device class
(:mod:`model_zoo.optimize.choose`). The accuracy floor is the fp32 model's accuracy minus
``accuracy_tolerance`` unless given. The registry documents (lineage, metrics) follow the
``PATCH /api/models/<name>/versions/<ref>`` contract; registry versions are filled in by the
caller, which knows them.
"""

from __future__ import annotations

import logging
import platform
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import numpy as np
import onnxruntime as ort

from model_zoo.optimize import digits as digits_data
from model_zoo.optimize import measure, onnx_steps, torch_steps
from model_zoo.optimize.choose import Candidate, Choice, DeviceClass, choose_per_device_class
from model_zoo.optimize.export import export_onnx
from treeline_common.profiles import PROFILES

logger = logging.getLogger(__name__)

BASELINE = "fp32"
# step name (what --steps takes) -> the variant it makes
STEP_VARIANTS: dict[str, str] = {"int8": "int8", "fp16": "fp16", "prune": "pruned", "distill": "distilled"}
TORCH_STEPS = frozenset({"prune", "distill"})
_TOOLS = ("torch", "onnx", "onnxruntime", "onnxscript", "scikit-learn", "numpy")


@dataclass(frozen=True)
class PipelineConfig:
    """Epochs, sample counts and measurement settings (``quick()`` for CI-sized runs)."""

    epochs: int = 30
    finetune_epochs: int = 10
    distill_epochs: int = 30
    prune_amount: float = 0.5
    calibration_samples: int = 200
    per_channel: bool = True
    latency_runs: int = 300
    warmup: int = 20
    threads: int = 1
    accuracy_tolerance: float = 0.01
    seed: int = 0

    @classmethod
    def quick(cls) -> PipelineConfig:
        """Fewer epochs and runs: minutes on two cores, figures noisier."""
        return cls(epochs=15, finetune_epochs=5, distill_epochs=15, calibration_samples=100,
                   latency_runs=60, warmup=5)


@dataclass(frozen=True)
class Variant:
    """One model version to be: its bytes and how it was made from ``parent`` (a variant name)."""

    name: str
    onnx_bytes: bytes
    parent: str | None
    operation: str
    parameters: dict[str, Any] = field(default_factory=dict)
    dataset: str = ""
    parameter_count: int | None = None

    @property
    def size_bytes(self) -> int:
        return len(self.onnx_bytes)


@dataclass(frozen=True)
class Measured:
    """Every variant of one model with its quality, p50 on this CPU and the per-class choices."""

    model: str
    quality_metric: str  # "accuracy" (held-out labels) or "agreement" (top-1 with fp32)
    dataset: str
    variants: dict[str, Variant]
    quality: dict[str, float]
    latency: measure.LatencyResult
    host_class: str
    accuracy_floor: float
    choices: dict[str, Choice]

    def lineage(self, name: str, parent: Mapping[str, Any]) -> dict[str, Any]:
        """The contract's lineage document for variant ``name``; ``parent`` is {name, version}."""
        variant = self.variants[name]
        return {"parent": dict(parent), "operation": variant.operation, "parameters": variant.parameters,
                "dataset": variant.dataset, "tools": tool_versions()}

    def metrics(self, name: str) -> dict[str, Any]:
        """The contract's metrics document: quality and the p50 *measured* here (emulated classes
        are scaled figures and stay out of the registry)."""
        return {"quality": {self.quality_metric: self.quality[name], "dataset": self.dataset},
                f"latency/{self.host_class}": {"p50_ms": self.latency.p50_ms[name]}}


def tool_versions(names: Iterable[str] = _TOOLS) -> dict[str, str]:
    """Installed versions of the packages that made and measured the variants."""
    found = {}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def parse_steps(text: str) -> tuple[str, ...]:
    """``"int8,fp16"`` → ("int8", "fp16"); unknown or repeated names raise ValueError naming them."""
    steps = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = [s for s in steps if s not in STEP_VARIANTS]
    if unknown or not steps:
        raise ValueError(f"steps: unknown {unknown or 'empty'}; known: {', '.join(STEP_VARIANTS)}")
    if len(set(steps)) != len(steps):
        raise ValueError(f"steps: each step at most once, got {list(steps)}")
    return steps


def device_classes() -> list[DeviceClass]:
    """This CPU (measured) and every emulated profile of treeline_common.profiles (scaled)."""
    host = DeviceClass(f"native-{platform.machine()}", 1.0, False)
    emulated = [DeviceClass(p.device_class, p.speed_factor, True) for p in PROFILES.values() if p.emulated]
    return [host, *emulated]


def digits_variants(base: Variant, split: digits_data.DigitsSplit, steps: Sequence[str],
                    config: PipelineConfig, teacher: digits_data.DigitsCNN | None = None) -> list[Variant]:
    """``base`` (the fp32 DigitsCNN export) followed by one variant per step, each from ``base``.

    ``teacher`` is the torch model ``base`` was exported from; rebuilt from the ONNX initialisers
    when absent and a torch step (prune, distill) is asked for.
    """
    variants = [base]
    if teacher is None and TORCH_STEPS.intersection(steps):
        teacher = digits_data.digits_cnn_from_onnx(base.onnx_bytes)
    example = digits_data.example_input()
    for step in steps:
        name = STEP_VARIANTS[step]
        logger.info("digits: step %s", step)
        if step == "int8":
            result = onnx_steps.quantize_int8(base.onnx_bytes, split.calibration(config.calibration_samples),
                                              per_channel=config.per_channel)
            variants.append(Variant(name, result.onnx_bytes, base.name, result.operation,
                                    result.parameters, f"{split.name}[train][:{config.calibration_samples}]"))
        elif step == "fp16":
            result = onnx_steps.convert_fp16(base.onnx_bytes)
            variants.append(Variant(name, result.onnx_bytes, base.name, result.operation, result.parameters))
        elif teacher is not None and step == "prune":
            pruned, params = torch_steps.prune_and_finetune(teacher, split, amount=config.prune_amount,
                                                            epochs=config.finetune_epochs, seed=config.seed)
            variants.append(Variant(name, export_onnx(pruned, example), base.name,
                                    "prune_structured_finetune", params, f"{split.name}[train]",
                                    digits_data.parameter_count(pruned)))
        elif teacher is not None and step == "distill":
            student, params = torch_steps.distill(teacher, split, epochs=config.distill_epochs,
                                                  seed=config.seed)
            variants.append(Variant(name, export_onnx(student, example), base.name, "distill", params,
                                    f"{split.name}[train]", digits_data.parameter_count(student)))
    return variants


def measure_variants(model: str, variants: Sequence[Variant], *, quality_metric: str, dataset: str,
                     quality_fn: Callable[[Mapping[str, ort.InferenceSession]], dict[str, float]],
                     sample: np.ndarray, config: PipelineConfig,
                     accuracy_floor: float | None = None) -> Measured:
    """Score, time and choose. ``quality_fn`` maps every variant's session to its quality;
    ``sample`` ([1, ...] float32) is what latency runs on."""
    sessions = {v.name: measure.session(v.onnx_bytes, config.threads) for v in variants}
    quality = quality_fn(sessions)
    latency = measure.interleaved_p50(sessions, sample, runs=config.latency_runs, warmup=config.warmup,
                                      seed=config.seed, threads=config.threads)
    floor = quality[BASELINE] - config.accuracy_tolerance if accuracy_floor is None else accuracy_floor
    candidates = [Candidate(v.name, quality[v.name], latency.p50_ms[v.name], v.size_bytes) for v in variants]
    classes = device_classes()
    choices = choose_per_device_class(candidates, classes, baseline=BASELINE, accuracy_floor=floor)
    return Measured(model, quality_metric, dataset, {v.name: v for v in variants}, quality, latency,
                    classes[0].name, floor, choices)


def run_digits(config: PipelineConfig, steps: Sequence[str] = tuple(STEP_VARIANTS),
               accuracy_floor: float | None = None) -> Measured:
    """Train the digits CNN, export it, derive ``steps``, measure everything."""
    split = digits_data.load_split(config.seed)
    teacher = digits_data.train_digits_cnn(split, epochs=config.epochs, seed=config.seed)
    base = Variant(BASELINE, export_onnx(teacher, digits_data.example_input()), None, "train",
                   {"epochs": config.epochs, "optimizer": "adam", "lr": 3e-3, "widths": teacher.widths()},
                   f"{split.name}[train]", digits_data.parameter_count(teacher))
    return measure_digits(digits_variants(base, split, steps, config, teacher), split, config, accuracy_floor)


def measure_digits(variants: Sequence[Variant], split: digits_data.DigitsSplit, config: PipelineConfig,
                   accuracy_floor: float | None = None) -> Measured:
    """Accuracy of every variant on the held-out split, then :func:`measure_variants`."""
    def accuracies(sessions: Mapping[str, ort.InferenceSession]) -> dict[str, float]:
        return {name: measure.accuracy(s, split.x_test, split.y_test) for name, s in sessions.items()}

    return measure_variants("digits_cnn", variants, quality_metric="accuracy", dataset=f"{split.name}[test]",
                            quality_fn=accuracies, sample=split.x_test[:1], config=config,
                            accuracy_floor=accuracy_floor)

