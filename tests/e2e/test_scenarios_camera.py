"""Scenario ``camera`` end to end, on a small frame: a real stack (broker, root, cluster, an
emulated battery camera offering 1 MB to models and a server, as processes).

- with the camera as the SLA's ``source`` the planner runs the stem on the camera and sends the
  small cut on (edge-first); with a privacy pin too; with ``max_partitions: 1`` the frame is
  shipped to the server (the camera cannot hold the whole model);
- every deployment's outputs equal onnxruntime on the whole model within 1e-5;
- the bytes the camera's sockets carried (kernel counters, not the plan): less than one frame per
  request when it sends the cut, at least one frame when it ships the frame.
"""

from __future__ import annotations

import io
import shutil
from collections.abc import Iterator

import pytest
from treeline_test_helpers import running_stack

from treeline_cli.scenarios import camera
from treeline_cli.scenarios.base import NodeSpec, StackSpec, add_nodes
from treeline_cli.scenarios.linkbytes import link_bytes, parse_ss
from treeline_cli.scenarios.models import camera_net
from treeline_cli.stack import Stack

pytestmark = pytest.mark.integration
SIZE = 64
FRAME_BYTES = 3 * SIZE * SIZE * 4
SPEC = StackSpec((NodeSpec("camera", camera.CAMERA, memory_limit_mb=1), NodeSpec("server", "server-1")))


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    if shutil.which("ss") is None:
        pytest.skip("`ss` (iproute2) is needed to read the bytes each link carried")
    with running_stack(tmp_path_factory.mktemp("stack"), nodes=0, telemetry_interval=0.5, node_threads=1,
                       node_labels={}, prepare=lambda s: add_nodes(s, SPEC)) as running:
        yield running


def test_the_stem_runs_on_the_camera_and_the_raw_frame_never_leaves_it(stack: Stack) -> None:
    out = io.StringIO()
    # 2 blocks of 96 channels: 0.7 MB of weights, 1.4 MB loaded, over the camera's 1 MB
    result = camera.measure(stack, out, camera_net(SIZE, 96, 2), SIZE, requests=8, windows=2, per_window=3)
    plans, figures = result["plans"], result["figures"]
    ours, pinned, ship = plans[camera.OURS], plans[camera.PINNED], plans[camera.SHIP]
    assert ours["stage_nodes"][0] == camera.CAMERA and len(ours["stage_nodes"]) >= 2, ours
    assert pinned["stage_nodes"][0] == camera.CAMERA, pinned
    assert ship["stage_nodes"] == ["server-1"], ship
    assert result["max_abs_output_difference"] <= 1e-5
    assert figures["camera_frame_bytes"] == FRAME_BYTES
    assert figures["camera_uplink_bytes_per_request_ship_frame"] >= FRAME_BYTES, figures
    assert 0 < figures["camera_uplink_bytes_per_request_ours"] < FRAME_BYTES / 4, figures
    assert figures["camera_raw_bytes_left_device"] == 0, figures
    table = out.getvalue()
    assert "camera uplink KB/request (measured)" in table and "the raw frame never left it" in table, table


SS = """\
0      0      127.0.0.1:49245 127.0.0.1:43434 users:(("python",pid=10,fd=25))
\t bbr wscale:10,10 bytes_sent:900 bytes_acked:800 bytes_received:5
0      0      127.0.0.1:49246 127.0.0.1:43434 users:(("python",pid=10,fd=26))
\t cubic bytes_acked:200
0      0      127.0.0.1:43434 127.0.0.1:49245 users:(("python",pid=11,fd=7))
\t cubic bytes_acked:5
0      0      127.0.0.1:50000 127.0.0.1:1883
\t cubic bytes_acked:7
"""


def test_link_bytes_from_ss_sum_a_process_sockets_per_peer_port() -> None:
    before = parse_ss(SS)
    assert before == {(10, 43434): 1000, (11, 49245): 5}  # the socket without a pid is skipped
    after = {(10, 43434): 1600, (11, 49245): 5}
    assert link_bytes(before, after, {"a": 10, "b": 11}, {"a": [49245], "b": [43434]}) == {
        ("a", "b"): 600, ("b", "a"): 0}
