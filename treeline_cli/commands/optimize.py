"""``treeline model optimize NAME[:REF]``: derive optimised variants, measure them, register each.

Downloads the version (sha256 checked), derives ``--steps`` from it (``int8``: static QDQ
calibrated on ``--calibration``'s training split; ``fp16``; ``prune``: L1 structured pruning
with the channels removed, then fine-tuning; ``distill``: a smaller student), measures every
variant and the version itself in onnxruntime on this machine (accuracy on the held-out split,
p50 at batch 1), picks per device class the fastest variant at or above the accuracy floor,
and registers each variant as a new version of NAME with its lineage, metrics and tags
(:mod:`model_zoo.optimize.publish`). ``prune`` and ``distill`` need the torch weights: they
rebuild the digits CNN from the version's ONNX initialisers, so they work on versions exported
from it (``treeline model register --builtin digits_cnn``) and say so otherwise.

torch, scikit-learn and the pipeline are imported when the command runs, not when ``treeline``
starts: a CLI without the ``export`` extra keeps working and this command says what to install.
"""

from __future__ import annotations

import logging
import tempfile
import warnings
from pathlib import Path
from typing import Any

import click
import onnx

from treeline_cli.commands.common import output, output_option, root_client, root_options
from treeline_cli.errors import Failure, UsageError
from treeline_cli.output import Column
from treeline_cli.resolve import split_model_ref

CALIBRATION_SETS = ("digits",)
DIGITS_INPUT = [1, 1, 8, 8]

COLUMNS = (
    Column("VARIANT", lambda r: "(start)" if r["version"] == r["parent_version"] else r["variant"]),
    Column("VERSION", lambda r: r["version"]),
    Column("SIZE_KB", lambda r: f"{r['size_bytes'] / 1024:.1f}"),
    Column("QUALITY", lambda r: f"{r['quality']:.4f}"),
    Column("P50_MS", lambda r: f"{r['p50_ms']:.4f}"),
    Column("CHOSEN_FOR", lambda r: ",".join(r["chosen_for"]) or "-"),
)


def _input_shape(data: bytes) -> list[int | str]:
    model = onnx.load_from_string(data)
    initialisers = {init.name for init in model.graph.initializer}
    first = next(i for i in model.graph.input if i.name not in initialisers)
    return [d.dim_value if d.HasField("dim_value") else d.dim_param for d in first.type.tensor_type.shape.dim]


@click.command()
@click.argument("ref", metavar="NAME[:REF]")
@click.option("--steps", default="int8,fp16,prune,distill", show_default=True,
              help="comma-separated steps, each making one version: int8, fp16, prune, distill")
@click.option("--calibration", type=click.Choice(CALIBRATION_SETS), default="digits", show_default=True,
              help="data set for int8 calibration, fine-tuning and accuracy (its training / held-out split)")
@click.option("--accuracy-floor", type=click.FloatRange(0.0, 1.0), default=None,
              help="lowest accuracy a chosen variant may have (default: the version's own minus 0.01)")
@click.option("--quick", is_flag=True, help="fewer epochs and latency runs (noisier figures)")
@output_option
@root_options
def optimize(ref: str, steps: str, calibration: str, accuracy_floor: float | None, quick: bool) -> None:
    """Derive optimised variants of a model version, measure them here, register each as a version."""
    try:  # the export extra (torch, scikit-learn): only this command needs it
        from model_zoo.optimize.digits import load_split
        from model_zoo.optimize.pipeline import (
            BASELINE,
            PipelineConfig,
            Variant,
            digits_variants,
            measure_digits,
            parse_steps,
        )
        from model_zoo.optimize.publish import publish
    except ImportError as exc:
        raise Failure(f"treeline model optimize needs {exc.name or 'torch'}",
                      "install the export extra: pip install 'treeline[export]'") from None
    # the exporter's notes (no torchvision, a deprecated pytree check) say nothing to a user of this command
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning, module="copyreg")
    try:
        step_names = parse_steps(steps)
    except ValueError as exc:
        raise UsageError(f"--{exc}", "e.g. --steps int8,fp16,prune,distill") from None
    name, version_ref = split_model_ref(ref)
    out = output()
    client = root_client(timeout=60)
    with out.step(f"downloading {name}:{version_ref}"), tempfile.TemporaryDirectory() as tmp:
        info = client.download_model(name, version_ref, Path(tmp) / "model.onnx")
        data = Path(info["path"]).read_bytes()
    base_version = int(info["version"])
    shape = _input_shape(data)
    if shape != DIGITS_INPUT:
        raise Failure(f"{name}:{base_version} takes an input of shape {shape}; --calibration {calibration} "
                      f"feeds {DIGITS_INPUT}", "optimise a model of that input shape")
    config = PipelineConfig.quick() if quick else PipelineConfig()
    split = load_split(config.seed)
    with out.step(f"deriving {', '.join(step_names)} from {name}:{base_version}"):
        try:
            variants = digits_variants(Variant(BASELINE, data, None, "registered"), split, step_names, config)
        except ValueError as exc:
            raise Failure(f"{name}:{base_version}: {exc}",
                          "prune and distill need a version exported from the digits CNN "
                          "(treeline model register --builtin digits_cnn); int8 and fp16 do not") from None
    with out.step(f"measuring {len(variants)} models in onnxruntime"):
        measured = measure_digits(variants, split, config, accuracy_floor)
    with out.step(f"registering {len(variants) - 1} versions of {name}"):
        published = publish(client, measured, name, base_version)
    document: dict[str, Any] = {
        "name": name, "parent_version": base_version, "quality_metric": measured.quality_metric,
        "dataset": measured.dataset, "accuracy_floor": measured.accuracy_floor,
        "measured_on": measured.host_class, "variants": [p.as_dict() for p in published],
        "choices": {dc: c.as_dict() for dc, c in measured.choices.items()},
    }

    def render() -> None:
        out.table([{**row, "parent_version": base_version} for row in document["variants"]], COLUMNS)
        host = measured.choices[measured.host_class]
        speedup = f"{host.speedup:.2f}x fp32" if host.speedup else "-"
        out.line(f"accuracy floor {measured.accuracy_floor:.4f}; on {measured.host_class} (measured): "
                 f"{host.variant or 'none'} ({speedup}); emulated classes scale this CPU's latency, "
                 "so they choose the same")

    out.result(document, render)
