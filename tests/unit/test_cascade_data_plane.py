"""A cascade's edge stage on real DataPlaneServers (loopback): it answers when confident and
escalates the ORIGINAL inputs otherwise; the large model's answer comes straight back to it.

Three nodes: the edge (the small model, the entry, signing with the generation's data key),
and the large model cut in two (cloud-a -> cloud-b), whose last stage answers the edge
directly on the ``reply_to`` path. Sessions are Python stand-ins: the small model's logits are
its input's first row (so the test sets the confidence), the large model multiplies by 10.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping

import numpy as np
import pytest
from treeline_test_helpers import start_data_plane_server

from node_engine.data_plane.client import DataPlaneError, TensorClient
from node_engine.data_plane.security import StageAccess
from node_engine.data_plane.server import DataPlaneServer, Held
from node_engine.stages import LoadedStage, StageTable
from treeline_common.cascade import CONFIDENCE_TIMING, ESCALATED_TIMING, EdgeRule, Escalation
from treeline_common.messages import NextStage
from treeline_common.tensor_wire import STAGE_FAILED, UNAUTHORIZED

KEY = bytes(range(32))
DEADLINE = 5.0
CONFIDENT = np.array([[6.0, 0.0, 0.0]], dtype=np.float32)  # softmax top-1 0.995
UNCERTAIN = np.array([[0.2, 0.1, 0.0]], dtype=np.float32)  # softmax top-1 0.37


class Recording:
    """A stand-in model: its one input (whatever its name) times ``scale``, recording what it saw."""

    input_names: tuple[str, ...] = ("x",)
    output_names: tuple[str, ...] = ("y",)

    def __init__(self, scale: float) -> None:
        self.scale = scale
        self.seen: list[np.ndarray] = []
        self.lock = threading.Lock()

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = np.asarray(next(iter(inputs.values())))
        with self.lock:
            self.seen.append(x.copy())
        return {"y": x * self.scale}

    def close(self) -> None:
        pass


def _stage(key: str, index: int, session: Recording, nxt: NextStage | None = None, entry: bool = False,
           cascade: Escalation | None = None, output: str = "y") -> LoadedStage:
    return LoadedStage(key, "d", index, "x", 1, session, nxt, outputs=(output,),
                       access=StageAccess(data_key=KEY, entry=entry), cascade=cascade)


def _cascade(servers: list[DataPlaneServer], threshold: float, confidence: str = "softmax_top1"
             ) -> tuple[DataPlaneServer, DataPlaneServer, Recording, Recording, Recording]:
    small, large_a, large_b = Recording(1.0), Recording(10.0), Recording(1.0)
    tables = [StageTable() for _ in range(3)]
    edge, cloud_a, cloud_b = (start_data_plane_server(servers, t, name) for t, name in
                              zip(tables, ("edge", "cloud-a", "cloud-b"), strict=True))
    tables[2].put(_stage("d/1/1", 1, large_b))
    tables[1].put(_stage("d/1/0", 0, large_a, NextStage("cloud-b", cloud_b.endpoint, "d/1/1")))
    route = Escalation(EdgeRule(threshold, confidence), NextStage("cloud-a", cloud_a.endpoint, "d/1/0"))
    tables[0].put(_stage("d/1/900", 900, small, entry=True, cascade=route))
    return edge, cloud_a, small, large_a, large_b


def test_confident_answers_stay_at_the_edge_and_uncertain_ones_escalate(
        servers: list[DataPlaneServer]) -> None:
    edge, _, small, large_a, _ = _cascade(servers, threshold=0.9)
    with TensorClient(edge.endpoint) as client:
        out, timings = client.infer("d/1/900", {"x": CONFIDENT}, timeout=DEADLINE)
        np.testing.assert_array_equal(out["y"], CONFIDENT)  # the small model's answer
        assert timings[ESCALATED_TIMING] == 0.0 and timings[CONFIDENCE_TIMING] > 0.99
        assert large_a.seen == []
        out, timings = client.infer("d/1/900", {"x": UNCERTAIN}, timeout=DEADLINE)
    np.testing.assert_allclose(out["y"], UNCERTAIN * 10.0)  # the large model's, on the original inputs
    np.testing.assert_array_equal(large_a.seen[0], UNCERTAIN)
    assert timings[ESCALATED_TIMING] == 1.0 and timings[CONFIDENCE_TIMING] == pytest.approx(0.3672, abs=1e-3)
    assert {"d/1/900", "d/1/0", "d/1/1"} <= set(timings)  # every stage that ran says so
    assert len(small.seen) == 2
    assert edge.held() == Held(0, 0, 0)


def test_the_escalated_share_follows_the_threshold(servers: list[DataPlaneServer]) -> None:
    edge, _, _, large_a, _ = _cascade(servers, threshold=0.6)
    rng = np.random.default_rng(7)
    batch = [rng.normal(0.0, 1.5, size=(1, 3)).astype(np.float32) for _ in range(40)]
    expected = [float(1.0 / np.exp(x - x.max()).sum()) < 0.6 for x in batch]
    with TensorClient(edge.endpoint) as client:
        answers = [client.infer("d/1/900", {"x": x}, timeout=DEADLINE) for x in batch]
    escalated = [timings[ESCALATED_TIMING] == 1.0 for _, timings in answers]
    assert escalated == expected and 0 < sum(escalated) < len(batch)
    assert len(large_a.seen) == sum(escalated)


def test_the_large_entry_takes_only_signed_requests(servers: list[DataPlaneServer]) -> None:
    _, cloud_a, _, large_a, _ = _cascade(servers, threshold=0.9)
    with TensorClient(cloud_a.endpoint) as client, pytest.raises(DataPlaneError) as raised:
        client.infer("d/1/0", {"x": UNCERTAIN}, timeout=DEADLINE)
    assert raised.value.code == UNAUTHORIZED and large_a.seen == []


def test_a_confidence_that_cannot_be_computed_fails_the_request(servers: list[DataPlaneServer]) -> None:
    edge, _, _, large_a, _ = _cascade(servers, threshold=0.9, confidence="output:missing")
    with TensorClient(edge.endpoint) as client, pytest.raises(DataPlaneError) as raised:
        client.infer("d/1/900", {"x": CONFIDENT}, timeout=DEADLINE)
    assert raised.value.code == STAGE_FAILED and "missing" in str(raised.value)
    assert large_a.seen == []
