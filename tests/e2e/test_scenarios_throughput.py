"""Scenario ``throughput`` end to end, on a small model: a real stack (broker, root, cluster and
three emulated edge boards on gigabit links, as processes).

The throughput objective cuts a chain of equal blocks into one stage per board; the best single
node runs it whole. Both answer every request, with outputs equal to onnxruntime on the whole
model within 1e-5, and the figures (gain, efficiency against the plan's bound) are reported.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterator

import pytest
from treeline_test_helpers import running_stack

from treeline_cli.scenarios import throughput
from treeline_cli.scenarios.base import add_nodes
from treeline_cli.scenarios.models import pipeline_net
from treeline_cli.stack import Stack

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(tmp_path_factory.mktemp("stack"), nodes=0, telemetry_interval=0.5, node_threads=1,
                       node_labels={}, prepare=lambda s: add_nodes(s, throughput.STACK)) as running:
        yield running


def test_the_throughput_plan_pipelines_over_every_board(stack: Stack) -> None:
    out = io.StringIO()
    result = throughput.measure(stack, out, pipeline_net(32, 16, 12), 32, 16, requests=24)
    plans, figures = result["plans"], result["figures"]
    pipeline, single = plans[throughput.OURS], plans[throughput.SINGLE]
    assert len(pipeline["stage_nodes"]) == throughput.DEVICES == len(set(pipeline["stage_nodes"])), pipeline
    assert len(single["stage_nodes"]) == 1, single
    assert pipeline["predicted"]["throughput_rps"] > single["predicted"]["throughput_rps"], plans
    assert result["max_abs_output_difference"] <= 1e-5
    for key in ("throughput_gain_vs_best_single", "pipeline_efficiency"):
        assert math.isfinite(figures[key]) and figures[key] > 0, figures
    assert "pipeline efficiency (measured / bound)" in out.getvalue()
