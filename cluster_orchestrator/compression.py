"""The measured effect of boundary compression on a model's outputs, and the codec the plan keeps.

The planner proposes a codec for the plan's bottleneck links (``ScheduleResult.compression``,
:mod:`ml_scheduler.planner.compression`) but cannot know what it does to the answers: that
depends on the model and its values. Here the cluster runs the model once in onnxruntime on
valid sample inputs (:mod:`treeline_cli.input_values`: images in [0, 1), token ids inside the
vocabulary, ...), partition by partition exactly as the node engines will, without and with
each proposed codec applied to the tensors crossing the proposed links
(:func:`treeline_common.tensor_codec.round_trip`, the node engines' own codec), and compares every
model output. The first codec in the planner's order (int8, then fp16) whose largest absolute
change stays within the SLA's ``max_output_abs_diff`` is kept; the others are dropped and the
explanation says why. When nothing can be measured (a partition fails to load or run) no codec
is kept: an unmeasured codec is never deployed.

The result (:class:`CompressionDecision`) is the placement's prediction under the kept codec
(``predicted["compression"] = {"codec", "stages"}``: the sending stages, read by
``planning.deploy_commands``) and the explanation's ``compression`` entry:
``{edge, edges, codec, bytes_before, bytes_after, predicted_ms_saved, output_max_abs_diff,
max_output_abs_diff, tried, note}`` (bytes as measured on the sample's tensors, per request).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from cluster_orchestrator.model_inputs import index_limits
from treeline_cli.input_values import random_inputs
from treeline_common.tensor_codec import CODECS, NONE, encode, round_trip

log = logging.getLogger(__name__)

SAMPLE_SEED = 0


@dataclass(frozen=True)
class CompressionDecision:
    """What the placement carries: the prediction under the kept codec and the explanation entry."""

    codec: str  # "" when none is kept
    predicted: dict[str, Any]
    explanation: dict[str, Any] = field(default_factory=dict)


def sample_specs(model: onnx.ModelProto, declared: Sequence[Mapping[str, Any]] = ()) -> list[dict[str, Any]]:
    """``[{name, shape, dtype[, index_limit]}]`` of the model's inputs: the SLA's ``declared`` specs
    when given (they bind symbolic dimensions), else the graph's (symbolic dimensions as 1)."""
    limits = index_limits(model)
    if declared:
        specs = [{"name": str(s["name"]), "shape": list(s.get("shape") or []),
                  "dtype": str(s.get("dtype") or "float32")} for s in declared]
    else:
        initializers = {t.name for t in model.graph.initializer}
        specs = []
        for graph_input in model.graph.input:
            if graph_input.name in initializers:
                continue
            tensor = graph_input.type.tensor_type
            dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type)
            shape = [d.dim_value if d.dim_value > 0 else 1 for d in tensor.shape.dim]
            specs.append({"name": graph_input.name, "shape": shape, "dtype": np.dtype(dtype).name})
    return [{**s, "index_limit": limits[s["name"]]} if s["name"] in limits else s for s in specs]


def measurement_session(model_bytes: bytes) -> ort.InferenceSession:
    """A one-thread, non-spinning CPU session of a partition (the measurement shares a busy host)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model_bytes, sess_options=options, providers=["CPUExecutionProvider"])


def run_chain(sessions: Sequence[ort.InferenceSession], outputs: Sequence[Sequence[str]],
              sample: Mapping[str, np.ndarray], codec: str = NONE,
              compressed: frozenset[int] = frozenset()) -> tuple[dict[str, np.ndarray], list[int], list[int]]:
    """Run the partitions in order as the node engines do, applying ``codec`` to what each stage
    in ``compressed`` sends on. ``(final outputs, bytes sent per stage before, after)``.

    ``outputs[j]``: the tensors stage j sends on (a tensor it does not compute is passed through
    from its inputs, as :meth:`node_engine.stages.LoadedStage.select_outputs` does).
    """
    tensors: dict[str, np.ndarray] = dict(sample)
    before, after = [], []
    for j, session in enumerate(sessions):
        names = [i.name for i in session.get_inputs()]
        produced = dict(zip([o.name for o in session.get_outputs()],
                            session.run(None, {n: tensors[n] for n in names}), strict=True))
        available = {**tensors, **produced}
        sent = {name: available[name] for name in outputs[j]}
        before.append(sum(a.nbytes for a in sent.values()))
        if j in compressed:
            after.append(sum(a.nbytes for a in encode(sent, codec).values()))
            sent = round_trip(sent, codec)
        else:
            after.append(before[-1])
        tensors = sent
    return tensors, before, after


def max_abs_diff(reference: Mapping[str, np.ndarray], other: Mapping[str, np.ndarray]) -> float:
    """Largest absolute difference over every output (``inf`` where either side is not finite
    and they differ, e.g. a NaN that appeared)."""
    worst = 0.0
    for name, ref in reference.items():
        a, b = np.asarray(ref, dtype=np.float64), np.asarray(other[name], dtype=np.float64)
        same = (a == b) | (np.isnan(a) & np.isnan(b))
        with np.errstate(invalid="ignore"):  # inf - inf where both are inf: masked by ``same``
            diff = np.where(same, 0.0, np.abs(a - b))
        worst = max(worst, float(np.nan_to_num(diff, nan=np.inf).max(initial=0.0)))
    return worst


def decide(model: onnx.ModelProto, partitions: Sequence[Any], proposal: Mapping[str, Any] | None,
           predicted: Mapping[str, Any], max_diff: float | None,
           declared_inputs: Sequence[Mapping[str, Any]] = ()) -> CompressionDecision:
    """Measure the proposed codecs' effect and keep the first within ``max_diff`` (module docstring).

    ``partitions``: the extracted partitions (``model_bytes``, ``outputs``), stage order;
    ``proposal``: ``ScheduleResult.compression`` (None: nothing proposed, ``predicted`` unchanged);
    ``max_diff``: the SLA's ``max_output_abs_diff`` (None: any change is accepted).
    """
    if not proposal:
        return CompressionDecision(NONE, dict(predicted))
    edges = list(proposal["edges"])
    stages = frozenset(int(e["stage"]) for e in edges)
    options = proposal["options"]
    entry: dict[str, Any] = {
        "edge": ", ".join(f"stage {e['stage']} ({e['from']}) -> stage {e['stage'] + 1} ({e['to']})"
                          for e in edges),
        "edges": edges, "codec": NONE, "max_output_abs_diff": max_diff, "tried": []}
    try:
        sessions = [measurement_session(p.model_bytes) for p in partitions]
        outputs = [tuple(p.outputs) for p in partitions]
        sample = next(random_inputs(sample_specs(model, declared_inputs), 1, seed=SAMPLE_SEED))
        reference, _, _ = run_chain(sessions, outputs, sample)
        for codec in proposal["codecs"]:
            result, before, after = run_chain(sessions, outputs, sample, codec, stages)
            diff = max_abs_diff(reference, result)
            tried = {"codec": codec, "output_max_abs_diff": diff}
            entry["tried"].append(tried)
            if max_diff is not None and not diff <= max_diff:
                tried["dropped"] = f"output changed by {diff:.3g} > max_output_abs_diff {max_diff:g}"
                continue
            entry.update(codec=codec, output_max_abs_diff=diff, bytes_before=sum(before[j] for j in stages),
                         bytes_after=sum(after[j] for j in stages),
                         predicted_ms_saved=options[codec]["predicted_ms_saved"])
            break
    except Exception as exc:  # noqa: BLE001 - any failure means "not measured": keep no codec
        log.warning("boundary compression not measured, none kept: %s", exc)
        entry["note"] = f"not measured ({exc}); sent uncompressed"
        return CompressionDecision(NONE, dict(predicted), {"compression": entry})
    codec = str(entry["codec"])
    if not codec:
        entry["note"] = "every allowed codec changed the outputs too much; sent uncompressed"
        return CompressionDecision(NONE, dict(predicted), {"compression": entry})
    kept = dict(options[codec]["predicted"])
    kept["compression"] = {"codec": codec, "stages": sorted(stages)}
    dropped = [t["codec"] for t in entry["tried"] if "dropped" in t]
    entry["note"] = f"{codec} on the bottleneck link" + (f" ({', '.join(dropped)} dropped)"
                                                          if dropped else "")
    return CompressionDecision(codec, kept, {"compression": entry, "plan": kept})


def unapplied(allowed: Sequence[str], decision: CompressionDecision, stages: int) -> dict[str, Any]:
    """The explanation's ``compression`` entry when the SLA allows codecs but the planner proposed
    none (``{}`` otherwise): why nothing was compressed, instead of silence."""
    if not allowed or "compression" in decision.explanation:
        return {}
    note = ("not applied: one stage, no link to compress" if stages < 2
            else "not applied: no link between stages is the plan's bottleneck")
    return {"compression": {"codec": None, "edge": "-", "note": note}}


def route_codecs(predicted: Mapping[str, Any] | None) -> dict[int, str]:
    """``{sending stage index: codec}`` of a placement's prediction (``predicted["compression"]``);
    ``{}`` when it compresses nothing or the entry is malformed."""
    chosen = (predicted or {}).get("compression")
    if not isinstance(chosen, Mapping) or chosen.get("codec") not in CODECS:
        return {}
    stages = chosen.get("stages")
    if not isinstance(stages, list):
        return {}
    return {int(s): str(chosen["codec"]) for s in stages if isinstance(s, int) and not isinstance(s, bool)}
