"""Stages on one node hand their tensors over in-process: the very arrays, no socket, no copy.

A real :class:`DataPlaneServer` on loopback serves a chain of stages routed to its own
endpoint; each stage records the arrays it was given, so the test can check that the next
stage received the object the previous one produced (identity, not equality). Also checks
that partition sessions are made without spinning intra-op threads (the reason is in
:func:`node_engine.runtime.session_options`).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from typing import Any

import numpy as np
from treeline_test_helpers import start_data_plane_server

from node_engine.data_plane.client import TensorClient
from node_engine.runtime import session_options
from node_engine.stages import LoadedStage, StageTable
from treeline_common.messages import NextStage


class _Recording:
    """Adds ``step`` to ``x``; keeps the arrays it received and produced."""

    input_names: tuple[str, ...] = ("x",)
    output_names: tuple[str, ...] = ("x",)

    def __init__(self, step: float) -> None:
        self.step = step
        self.received: list[np.ndarray] = []
        self.produced: list[np.ndarray] = []

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.received.append(inputs["x"])
        out = inputs["x"] + np.float32(self.step)
        self.produced.append(out)
        return {"x": out}

    def close(self) -> None:
        pass


def _stage(key: str, session: _Recording, nxt: NextStage | None) -> LoadedStage:
    index = int(key.rsplit("/", 1)[1])
    return LoadedStage(key, "local", index, "x", 1, session, nxt)


def test_co_located_stages_receive_the_previous_stages_arrays(servers: list[Any]) -> None:
    table = StageTable()
    server = start_data_plane_server(servers, table, "solo")
    sessions = [_Recording(1.0), _Recording(10.0), _Recording(100.0)]
    keys = [f"local/1/{i}" for i in range(3)]
    for i, session in enumerate(sessions):
        nxt = NextStage("solo", server.endpoint, keys[i + 1]) if i + 1 < len(keys) else None
        table.put(_stage(keys[i], session, nxt))
    x = np.arange(25_600, dtype=np.float32)
    with TensorClient(server.endpoint) as client:
        outputs, timings = client.infer(keys[0], {"x": x}, timeout=10.0)
    np.testing.assert_array_equal(outputs["x"], x + 111.0)
    assert set(timings) == set(keys)  # every stage ran, and only on this node (no link timing)
    for before, after in itertools.pairwise(sessions):
        assert after.received[0] is before.produced[0]  # handed over, not serialised or copied


def test_partition_sessions_do_not_spin() -> None:
    options = session_options(2)
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert options.intra_op_num_threads == 2
    assert options.inter_op_num_threads == 1
