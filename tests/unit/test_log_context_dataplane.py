"""A node's data plane logs a refusal and a failed stage with the request id of the tensor-wire
header and the deployment of the stage key (real servers on loopback)."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping

import numpy as np
import pytest
from treeline_test_helpers import start_data_plane_server as _server

from cluster_orchestrator.keys import DataPlaneSecurity
from node_engine.data_plane.client import DataPlaneError, TensorClient
from node_engine.data_plane.server import DataPlaneServer
from node_engine.stages import LoadedStage, StageTable
from tests.unit.test_data_plane_security import SECRET, X, _deploy, _endpoints, _placement, _raw_request
from tests.unit.test_log_context import Records
from treeline_common.messages import stage_key
from treeline_common.tensor_wire import STAGE_FAILED, UNAUTHORIZED, pack


@pytest.fixture
def records() -> Iterator[Records]:
    logger, handler = logging.getLogger("node_engine.data_plane"), Records()
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(level)


class Failing:
    """A session whose every run fails."""

    input_names: tuple[str, ...] = ()
    output_names: tuple[str, ...] = ()

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise RuntimeError("out of memory")

    def close(self) -> None:
        pass


def test_a_refusal_names_the_request_and_the_deployment(servers: list[DataPlaneServer],
                                                        records: Records) -> None:
    tables = {"n0": StageTable(), "n1": StageTable()}
    nodes = [_server(servers, tables[name], name) for name in tables]
    _deploy(_placement("svc-0", _endpoints(nodes)), tables, DataPlaneSecurity(SECRET))
    frames = pack("request", "req-refused-1", {"x": X}, stage="svc-0/1/1")  # unsigned, to an inner stage
    answer = _raw_request(nodes[1].endpoint, [bytes(frames[0]), X.tobytes()])
    assert answer is not None and answer[0].code == UNAUTHORIZED
    [(request_id, deployment_id, _)] = records.ids_of("refusing stage svc-0/1/1 on plain TCP")
    assert (request_id, deployment_id) == ("req-refused-1", "svc-0")


def test_a_failed_stage_names_the_request_and_the_deployment(servers: list[DataPlaneServer],
                                                             records: Records) -> None:
    table = StageTable()
    node = _server(servers, table, "n0")
    key = stage_key("svc-9", 0, 2)
    table.put(LoadedStage(key, "svc-9", 0, "0" * 64, 2, Failing(), None))
    with TensorClient(node.endpoint) as client, \
            pytest.raises(DataPlaneError, match="out of memory") as failed:
        client.infer(key, {"x": X})
    assert failed.value.code == STAGE_FAILED
    [(request_id, deployment_id, thread)] = records.ids_of(f"stage {key} failed: out of memory")
    assert deployment_id == "svc-9" and request_id  # the wire's id (the client made it up)
    assert thread != "MainThread"  # logged by the server's worker, which binds the ids itself
