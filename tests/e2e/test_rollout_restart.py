"""A rolled-back rollout through a real stack, then the stack restarted on the same data dir.

v1 (``y = 2x``) serves; v2 (``y = -2x``: the argmax moves, the probe disagrees) is registered and
the SLA re-applied; its canary rolls back. The root must then show what really serves (the
instance's model and the service's ``model.resolved`` are v1, so deleting v1 is refused with 409
while deleting the refused v2 is not blocked by the instance). The stack is stopped and started
again on the same data dir (the node comes back on another port, so the cluster re-plans): the
service must be RUNNING on v1 again at the new address, answering requests, instead of retrying
the refused version forever. Then v3 (``2x`` as another graph) is rolled out with no live traffic
at all: it is promoted on its complete, agreeing probe once the canary was idle for 10 s.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from treeline_test_helpers import running_stack

from benchmarks.rollout import rollout_sla, scaled, wait_for_event
from node_engine.data_plane.service_client import RetryPolicy, ServiceClient
from treeline_cli.inference import service_resolver
from treeline_cli.root_client import RootClient
from treeline_common.errors import Conflict
from treeline_common.netutil import poll_until

pytestmark = pytest.mark.integration
DEADLINE_S = 90.0
STACK = {"nodes": 1, "profiles": ("server",), "telemetry_interval": 0.5, "node_threads": 1, "node_labels": {}}


def answer(root_url: str, service_id: str) -> float:
    """``y[0] / x[0]`` of one request through the service's entry (re-resolving through the root)."""
    with ServiceClient(service_resolver(root_url, service_id),
                       policy=RetryPolicy(deadline=30.0, attempt_timeout=5.0)) as client:
        outputs, _ = client.infer({"x": np.array([[1.0, 2.0, 3.0, 4.0]], dtype=np.float32)})
    return round(float(outputs["y"][0, 0]), 3)


def serving_version(root: RootClient, service_id: str) -> Any:
    service = root.service(service_id)
    [inst] = service["instances"]
    return (inst.get("model") or {}).get("version"), (service["model"].get("resolved") or {}).get("version")


def test_a_rolled_back_service_serves_its_version_again_after_a_restart(tmp_path: Path) -> None:
    data_dir = tmp_path / "stack"
    sla = rollout_sla(0.3, 12)
    with running_stack(data_dir, **STACK) as stack:
        root = RootClient(stack.root_url)
        root.register_model("scaler", scaled(2.0))
        [application] = root.apply(sla)
        [service_id] = application["microservices"]
        root.deploy_service(service_id)
        root.wait_deployed(service_id, timeout=DEADLINE_S)
        root.register_model("scaler", scaled(-2.0))  # disagrees: rolled back
        since = time.time()
        root.apply(sla)
        verdict = wait_for_event(root, service_id, ("promoted", "rolled_back"), since, DEADLINE_S)
        assert verdict["kind"] == "rolled_back", verdict
        # the root learns from the cluster's push what serves: v1, not the refused v2
        poll_until(lambda: serving_version(root, service_id) == (1, 1), 30.0, interval=0.2,
                   what="the root to show v1 serving")
        with pytest.raises(Conflict):
            root.call("DELETE", "/api/models/scaler/versions/1")
        rolled_back_at = int(root.service(service_id)["placement"]["generation"])
        assert answer(stack.root_url, service_id) == 2.0
        old_endpoint = root.service(service_id)["placement"]["entry"]["endpoint"]

    with running_stack(data_dir, **STACK) as stack:
        root = RootClient(stack.root_url)

        def back() -> dict[str, Any] | None:
            service = root.service(service_id)
            placement = service.get("placement") or {}
            fresh = int(placement.get("generation", 0)) > rolled_back_at
            return service if fresh and service.get("status") == "RUNNING" else None

        service = poll_until(back, DEADLINE_S, interval=0.25, what="the service RUNNING on a new placement")
        assert service["placement"]["entry"]["endpoint"] != old_endpoint
        assert serving_version(root, service_id) == (1, 1)
        assert answer(stack.root_url, service_id) == 2.0

        # an idle service (no live traffic) still promotes a good version: on its complete probe
        root.register_model("scaler", scaled(2.0, via_add=True))
        since = time.time()
        root.apply(sla)
        verdict = wait_for_event(root, service_id, ("promoted", "rolled_back"), since, DEADLINE_S)
        assert verdict["kind"] == "promoted" and "no live request" in verdict["reason"], verdict
        assert verdict["figures"]["live_requests"] == 0 and verdict["figures"]["probe_requests"] == 4, verdict
        poll_until(lambda: serving_version(root, service_id) == (3, 3), 30.0, interval=0.2,
                   what="the root to show v3 serving")
