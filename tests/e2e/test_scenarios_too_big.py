"""Scenario ``too-big`` end to end, on a small transformer: a real stack (broker, root, cluster,
three emulated edge boards each offering 4 MB and a cloud server, as processes).

The model (5 MB of weights, 10 MB loaded) fits no board: a single-board plan is refused with the
planner's reason; the edge split runs on edge boards only (every stage admitted by its node);
the offload runs whole on the cloud; the planner's own plan is one of the two. Every deployment's
outputs equal onnxruntime on the whole model within 1e-5.
"""

from __future__ import annotations

import io
from collections.abc import Iterator

import pytest
from treeline_test_helpers import running_stack

from treeline_cli.scenarios import too_big
from treeline_cli.scenarios.base import NodeSpec, StackSpec, add_nodes
from treeline_cli.scenarios.models import tiny_transformer
from treeline_cli.stack import Stack

pytestmark = pytest.mark.integration
SEQ = 16
SPEC = StackSpec((*(NodeSpec("edge-128", name, memory_limit_mb=4) for name in too_big.EDGES),
                  NodeSpec("cloud", too_big.CLOUD)))


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(tmp_path_factory.mktemp("stack"), nodes=0, telemetry_interval=0.5, node_threads=1,
                       node_labels={}, prepare=lambda s: add_nodes(s, SPEC)) as running:
        yield running


def test_a_model_no_edge_board_holds_is_split_over_the_boards_or_offloaded(stack: Stack) -> None:
    out = io.StringIO()
    model = tiny_transformer(vocab=2000, hidden=128, layers=5, seq_len=SEQ)
    assert 4.5e6 < len(model) < 5.5e6  # over 4 MB loaded twice over; three stages of it fit 4 MB each
    result = too_big.measure(stack, out, model, SEQ, requests=8)
    plans, figures = result["plans"], result["figures"]
    split, offload = plans[too_big.SPLIT]["stage_nodes"], plans[too_big.OFFLOAD]["stage_nodes"]
    assert len(split) >= 2 and set(split) <= set(too_big.EDGES), split
    assert offload == [too_big.CLOUD], offload
    ours = result["ours"]
    assert figures["too_big_planner_choice"] == ours["shape"] in ("split", "offload"), ours
    assert ours["measured_as"] == (too_big.SPLIT if ours["shape"] == "split" else too_big.OFFLOAD)
    assert figures["too_big_single_edge_refused"] is True
    assert "no_feasible_plan" in str(result["single_edge_refusal"]["reasons"]), result["single_edge_refusal"]
    assert result["max_abs_output_difference"] <= 1e-5
    assert figures["too_big_latency_ms_split"] > 0 and figures["too_big_latency_ms_offload"] > 0
    assert "REFUSED" in out.getvalue() and result["explanation"].startswith("the planner chose ")
