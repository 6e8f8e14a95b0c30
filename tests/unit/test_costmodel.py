"""The pure cost model: regression fit, profile attribution, CostModel sources, build_problem."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import onnx
import pytest

from ml_scheduler.costmodel import (
    CostModel,
    Sample,
    attribute,
    build_problem,
    fit_regression,
    fusion_heads,
    prediction_error,
    stage_times,
)
from ml_scheduler.costmodel.regression import nnls_small
from ml_scheduler.graph import ModelGraph, analyze_model
from ml_scheduler.problem import evaluate
from ml_scheduler.snapshot import NodeView
from model_zoo.tiny import tiny_dag_bytes
from treeline_common.profiles import LOAD_MEMORY_FACTOR


@pytest.fixture(scope="module")
def graph() -> ModelGraph:
    return analyze_model(onnx.load_from_string(tiny_dag_bytes(seed=0)))


def _node(node_id: str, speed: float, memory: float | None, **extra: object) -> NodeView:
    base = NodeView(node_id, node_id, str(extra.pop("profile", "server")), True, speed, memory)
    return SimpleNamespace(**{**base.__dict__, **extra}) if extra else base  # type: ignore[return-value]


# -- regression ------------------------------------------------------------------------------------------

def test_nnls_recovers_non_negative_coefficients_and_clips_negative_ones() -> None:
    rng = np.random.default_rng(0)
    x = np.column_stack([rng.uniform(1e6, 1e8, 50), rng.uniform(1e3, 1e6, 50), np.ones(50)])
    truth = np.array([2e-8, 3e-6, 0.05])
    np.testing.assert_allclose(nnls_small(x, x @ truth), truth, rtol=1e-6)
    negative = nnls_small(x, x @ np.array([2e-8, -3e-6, 0.05]))
    assert np.all(negative >= 0) and negative[1] == 0.0


def test_fit_regression_recovers_known_coefficients_per_type() -> None:
    rng = np.random.default_rng(1)
    truth = {"Conv": (1e-8, 2e-7, 0.02), "Relu": (0.0, 5e-7, 0.001)}
    samples = []
    for op_type, (a, b, c) in truth.items():
        for _ in range(40):
            flops, nbytes = float(rng.uniform(1e5, 1e8)), float(rng.uniform(1e3, 1e6))
            samples.append(Sample(op_type, flops, nbytes, a * flops + b * nbytes + c))
    samples += [Sample("Gemm", 1e6, 1e4, 0.5)]  # too few for its own model: uses the fallback
    model = fit_regression(samples)
    for op_type, coef in truth.items():
        np.testing.assert_allclose(model.by_type[op_type], coef, rtol=1e-5, atol=1e-12)
    assert "Gemm" not in model.by_type and model.coefficients("Gemm") == model.fallback
    assert model.n_samples == 81 and not model.is_prior
    assert fit_regression([]).is_prior


def test_regression_prediction_scales_with_speed_factor(graph: ModelGraph) -> None:
    model = fit_regression([Sample(op.op_type, op.flops, op.param_bytes + op.output_bytes, 1e-6 * op.flops + 0.01)
                            for op in graph.ops])
    reference = model.predict(graph, 1.0)
    assert reference.shape == (len(graph.ops),) and np.all(reference > 0)
    np.testing.assert_allclose(model.predict(graph, 0.25), reference * 4)


# -- attribution of a profile onto the ops ---------------------------------------------------------------

def test_fused_op_shares_its_consumers_measured_time(graph: ModelGraph) -> None:
    # ORT fuses conv0 + relu0 into one kernel credited to relu0 (the producer of "a").
    profile = {op.name: 1.0 for op in graph.ops if op.name != "conv0"}
    assert fusion_heads(graph, set(profile)) == {0: 1}
    weights = np.ones(len(graph.ops))
    weights[0] = 3.0
    times = attribute(graph, profile, weights)
    assert times.measured.all()
    assert times.ms[0] == pytest.approx(0.75) and times.ms[1] == pytest.approx(0.25)
    assert times.ms.sum() == pytest.approx(sum(profile.values()))


def test_unfusable_missing_op_gets_calibrated_estimate(graph: ModelGraph) -> None:
    # residual_add's output feeds two branches: it cannot have been fused into one consumer.
    names = [op.name for op in graph.ops]
    missing = names.index("residual_add")
    profile = {name: 2.0 for name in names if name != "residual_add"}
    weights = np.ones(len(names))  # the regression says every op costs the same...
    times = attribute(graph, profile, weights)
    assert not times.measured[missing] and times.ms[missing] == pytest.approx(2.0)  # ...so k = 2
    assert times.coverage == pytest.approx((len(names) - 1) / len(names))


def test_cost_model_sources_and_speed_normalisation(graph: ModelGraph) -> None:
    server = {op.name: 0.01 * (i + 1) for i, op in enumerate(graph.ops)}
    rpi = {name: 4 * ms for name, ms in server.items()}
    model = CostModel.from_profiles(graph, {"server": {"op_ms": server, "total_ms": 1.0},
                                            "rpi4": {"op_ms": rpi, "total_ms": 4.0},
                                            "broken": {"op_ms": {}, "error": "boom"}})
    assert set(model.profiles) == {"server", "rpi4"} and model.speed_factors["rpi4"] == 0.25
    ms, source = model.op_ms(graph, "server", 1.0)
    assert source == "profile"
    # scaled so the ops add up to the measured end-to-end run (per-run overhead spread over them)
    kernels = sum(server.values())
    np.testing.assert_allclose(ms, [server[op.name] * 1.0 / kernels for op in graph.ops])
    guess, source = model.op_ms(graph, "jetson-nano", 0.5)
    assert source == "regression"
    # both profiles agree once normalised, so a class between them lands between them
    assert guess.sum() == pytest.approx(2 * sum(server.values()), rel=0.25)
    prior_ms, prior_source = CostModel.from_profiles(graph).op_ms(graph, "rpi4", 0.25)
    assert prior_source == "regression" and np.all(prior_ms > 0)


def test_with_speed_factors_refits_only_on_change(graph: ModelGraph) -> None:
    model = CostModel.from_profiles(graph, {"custom": {"op_ms": {op.name: 1.0 for op in graph.ops}}})
    assert model.speed_factors["custom"] == 1.0
    assert model.with_speed_factors({"custom": 1.0, "other": 3.0}) is model
    slower = model.with_speed_factors({"custom": 0.5})
    ratio = slower.op_ms(graph, "x", 1.0)[0].sum() / model.op_ms(graph, "x", 1.0)[0].sum()
    assert ratio == pytest.approx(0.5, rel=1e-6)


# -- build_problem -----------------------------------------------------------------------------------------

def test_build_problem_shapes_and_values(graph: ModelGraph) -> None:
    n = len(graph.ops)
    server_profile = {op.name: 0.1 for op in graph.ops}
    model = CostModel.from_profiles(graph, {"server": {"op_ms": server_profile}})
    devices = [
        _node("srv", 1.0, None, profile="server", device_class="server", power_w=65.0, radio_nj_per_byte=5.0,
              uplink_mbps=1000.0, link_rtt_ms=0.5),
        _node("pi", 0.25, 4096, profile="rpi4", device_class="rpi4", power_w=6.0, radio_nj_per_byte=50.0,
              uplink_mbps=50.0, link_rtt_ms=5.0),
        _node("old", 0.5, 512),  # a NodeView without the v2 fields: defaults apply
    ]
    problem = build_problem(graph, devices, model, source_idx=1, sink_idx=0, max_partitions=2,
                            first_device=1, objective="throughput")
    assert problem.op_ms.shape == (3, n)
    np.testing.assert_allclose(problem.op_ms[0], 0.1)  # measured on this class
    assert problem.cut_bytes.shape == (n + 1,)
    assert problem.cut_bytes[0] == 1 * 3 * 16 * 16 * 4  # graph input
    assert problem.cut_bytes[n] == 10 * 4  # graph output
    np.testing.assert_array_equal(problem.cut_bytes, [graph.cut_bytes(p) for p in range(n + 1)])
    np.testing.assert_array_equal(problem.param_bytes,  # charged as the node admits a stage
                                  [LOAD_MEMORY_FACTOR * op.param_bytes for op in graph.ops])
    np.testing.assert_array_equal(problem.live_bytes,
                                  [graph.cut_bytes(i) + op.output_bytes for i, op in enumerate(graph.ops)])
    assert math.isinf(problem.mem_bytes[0]) and problem.mem_bytes[1] == 4096 * 1024 * 1024
    assert problem.rtt_ms[1, 0] == 5.0 and problem.rtt_ms[0, 1] == 0.5 and problem.rtt_ms[2, 0] == 0.5
    assert problem.bandwidth[1, 0] == 50.0 * 125 and problem.bandwidth[2, 1] == 1000.0 * 125
    np.testing.assert_array_equal(problem.power_w, [65.0, 6.0, 10.0])
    np.testing.assert_array_equal(problem.radio_nj_per_byte, [5.0, 50.0, 20.0])
    assert problem.device_ids == ("srv", "pi", "old")
    assert (problem.source, problem.sink, problem.first_device, problem.max_partitions) == (1, 0, 1, 2)
    assert problem.objective == "throughput"
    plan = evaluate(problem, [4], [1, 0])
    assert plan is not None
    np.testing.assert_allclose([s.compute_ms for s in plan.stages], stage_times(problem, [4], [1, 0]))


def test_build_problem_rejects_unknown_objective(graph: ModelGraph) -> None:
    with pytest.raises(ValueError, match="objective"):
        build_problem(graph, [_node("a", 1.0, None)], CostModel.from_profiles(graph), objective="fast")


def test_stage_times_and_prediction_error() -> None:
    ms = np.arange(1.0, 7.0)  # 1..6
    np.testing.assert_allclose(stage_times(ms, [2, 4]), [3.0, 7.0, 11.0])
    matrix = np.vstack([ms, 10 * ms])
    np.testing.assert_allclose(stage_times(matrix, [3], [1, 0]), [60.0, 15.0])
    with pytest.raises(ValueError):
        stage_times(ms, [4, 2])
    np.testing.assert_allclose(prediction_error([11.0, 9.0, 1.0], [10.0, 10.0, 0.0]), [0.1, 0.1, np.inf])
