"""Scenario ``battery`` end to end: a real stack (broker, root, cluster, a server and an emulated
rpi4 with a 2 mWh battery, as processes). Traffic drains the rpi4 below the SLA's
``battery.min_percent``: the deployment is re-planned off it with no failed request while a client
sends the whole time; put on charge, the rpi4 gets the deployment back once past the hysteresis.
Both moves are events with a ``battery:`` cause at the root."""

from __future__ import annotations

import io
from collections.abc import Iterator

import pytest
from treeline_test_helpers import running_stack

from treeline_cli.root_client import RootClient
from treeline_cli.scenarios.base import add_nodes
from treeline_cli.scenarios.battery import BATTERY_NODE, MAINS_NODE, MIN_PERCENT, report, stack_spec
from treeline_cli.stack import Stack

pytestmark = pytest.mark.integration
BATTERY_WH = 0.002  # the demo's 5 mWh would drain for longer


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(tmp_path_factory.mktemp("stack"), nodes=0, telemetry_interval=0.5, node_threads=1,
                       node_labels={}, prepare=lambda s: add_nodes(s, stack_spec(BATTERY_WH))) as running:
        yield running


def test_a_draining_battery_moves_the_deployment_off_without_failures_and_charging_brings_it_back(
        stack: Stack) -> None:
    out = io.StringIO()
    result = report(stack, out, BATTERY_WH)
    figures, plans = result["figures"], list(result["plans"].values())
    assert [p["nodes"] for p in plans] == [[BATTERY_NODE], [MAINS_NODE], [BATTERY_NODE]], plans
    assert figures["battery_replan_failed_requests"] == 0
    assert figures["battery_replans"] == 2
    assert all(p["answered"] > 0 for p in plans), plans
    on_battery, on_mains = plans[0], plans[1]
    # the rpi4 draws 6 W for 4x the host's time, the server 65 W: less energy per inference on the rpi4
    assert on_battery["predicted_mj"] < on_mains["predicted_mj"], plans
    assert on_battery["battery_mj"] is not None and on_battery["battery_mj"] > 0, plans
    causes = [e["cause"] for e in result["events"]]
    assert f"below the SLA's minimum {MIN_PERCENT:g}%" in causes[0] and "charged" in causes[1], causes
    events = RootClient(stack.root_url).service_events(result["service_id"])
    replans = [e for e in events if e.get("kind") == "replan"]
    assert [e["cause"].split(":")[0] for e in replans] == ["battery", "battery"], replans
    table = out.getvalue()
    assert "predicted mJ/inference" in table and "failed requests during both moves: 0" in table, table
