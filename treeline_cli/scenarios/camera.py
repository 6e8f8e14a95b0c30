"""``camera``: frames arrive on a weak battery camera; run the first layers there, send the cut.

The SLA names the camera as the model's ``source``, so requests really enter on the camera node
(a relay stage there when the plan starts elsewhere) and pay its emulated uplink (40 Mbit/s,
5 ms). The model (:func:`~treeline_cli.scenarios.models.camera_net`) shrinks a 256 x 256 frame
(786 KB) 24-fold in two cheap strided convolutions, then runs a heavier backbone. Compared:

- **ours**: the exact planner with the source (Neurosurgeon/DADS): it runs the stem on the
  camera and sends the 32 KB cut when that is predicted faster than shipping the frame;
- **privacy pin**: the same SLA with ``privacy_pin: camera`` (stage 0 must run there);
- **ship the frame**: ``max_partitions: 1``, what a single-device runtime does: the whole model
  on one node; the camera offers 1 MB to models (the stem fits, the whole model does not), so
  the frame goes to the server over the camera's uplink.

Bytes per link are MEASURED (:mod:`.linkbytes`: the kernel's TCP counters of each node process),
in ``windows`` short runs after the timed rounds, median per request. The raw frame left the
camera only if the camera's sockets carried at least the frame's bytes per request.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping
from typing import Any, TextIO

import treeline_cli.scenarios.linkbytes as linkbytes
from treeline_cli.demo import register_once
from treeline_cli.inference import run_requests, service_resolver
from treeline_cli.root_client import RootClient
from treeline_cli.scenarios.base import NodeSpec, Scenario, StackSpec
from treeline_cli.scenarios.common import (
    deploy_all,
    measure_services,
    measured_column,
    ml_sla,
    node_endpoints,
    plans_record,
    render_table,
    replanned_note,
    shared_login,
    whole_model_difference,
)
from treeline_cli.scenarios.models import camera_net
from treeline_cli.stack import Stack

MODEL = "camera-net"
CAMERA = "camera-1"
CAMERA_MEMORY_MB = 1  # what the camera offers to models: the stem fits, the whole model does not
STACK = StackSpec((NodeSpec("camera", CAMERA, memory_limit_mb=CAMERA_MEMORY_MB),
                   NodeSpec("server", "server-1"),
                   NodeSpec("jetson-nano", "jetson-nano-1")))
OURS, PINNED, SHIP = "ours: plan from the camera", "privacy pin: camera", "ship the frame (1 device)"


def slas(size: int) -> dict[str, dict[str, Any]]:
    """The three SLAs compared (see the module docstring), by label."""
    inputs = [{"name": "input", "shape": [1, 3, size, size], "dtype": "float32"}]
    source = {"node": CAMERA}
    return {
        OURS: ml_sla("camera-ours", MODEL, inputs, source=source),
        PINNED: ml_sla("camera-pinned", MODEL, inputs, source=source,
                       constraints=[{"type": "privacy_pin", "node": CAMERA}]),
        SHIP: ml_sla("camera-ship", MODEL, inputs, source=source, max_partitions=1),
    }


def camera_bytes_per_request(stack: Stack, service: Mapping[str, Any], windows: int,
                             per_window: int) -> dict[str, float]:
    """Median bytes per request the camera's process sent to each other node (kernel counters)."""
    names = stack.node_names
    pids = {CAMERA: stack.node(CAMERA).process.pid}
    endpoints = node_endpoints(stack)
    ports = {name: [linkbytes.endpoint_port(endpoints[name])] for name in names if name in endpoints}
    resolver = service_resolver(stack.root_url, str(service["service_id"]))
    samples: dict[str, list[float]] = {}
    for window in range(windows):
        before = linkbytes.snapshot()
        report = run_requests(service["placement"], per_window, seed=500 + window, resolver=resolver)
        after = linkbytes.snapshot()
        answered = max(1, report.requests)
        for (sender, receiver), sent in linkbytes.link_bytes(before, after, pids, ports).items():
            samples.setdefault(f"{sender}->{receiver}", []).append(sent / answered)
    return {link: float(statistics.median(values)) for link, values in samples.items()}


def measure(stack: Stack, out: TextIO, onnx_bytes: bytes, size: int, requests: int,
            windows: int = 3, per_window: int = 4) -> dict[str, Any]:
    """Deploy the three alternatives of ``onnx_bytes`` (a camera_net for ``size``), measure, print
    the table; the result of :data:`SCENARIO` (figures, plans, prediction errors, link bytes)."""
    register_once(RootClient(stack.root_url), MODEL, onnx_bytes, "camera scenario model")
    services = deploy_all(stack, slas(size), out)
    out.write(f"Sending {requests} requests to each, interleaved ...\n")
    with shared_login(stack.root_url):
        results, replanned = measure_services(stack.root_url, services, requests)
        link = {label: camera_bytes_per_request(stack, svc, windows, per_window)
                for label, svc in services.items()}
        diff = whole_model_difference(services, onnx_bytes, stack.root_url)
    frame_bytes = 3 * size * size * 4
    uplink = {label: sum(v for k, v in link[label].items() if k.startswith(f"{CAMERA}->"))
              for label in services}
    columns = [measured_column(label, services[label], results[label]) for label in services]
    for column in columns:
        column.figures["camera uplink KB/request (measured)"] = uplink[column.label] / 1024
        column.figures["frame left the camera"] = float(uplink[column.label] >= frame_bytes)
    ours, ship = results[OURS]["latency"].p50_ms, results[SHIP]["latency"].p50_ms
    pinned_raw = uplink[PINNED] if uplink[PINNED] >= frame_bytes else 0.0
    notes = [f"frame: {frame_bytes / 1024:.0f} KB; ours sends {uplink[OURS] / 1024:.1f} KB per request over "
             "the "
             f"camera's uplink: {ship / ours:.1f}x faster than shipping the frame (p50, measured)",
             f"privacy pin: the camera's sockets carried {uplink[PINNED] / 1024:.1f} KB per request "
             "(" + ("the frame left the camera" if pinned_raw
                    else "less than one frame: the raw frame never left it") + ")",
             f"max |pipeline - whole model| over every output: {diff:.1e}", *replanned_note(replanned)]
    out.write(render_table("camera: the frame arrives on a battery camera", columns, notes))
    return {
        "figures": {"camera_speedup_vs_ship_frame": ship / ours, "camera_raw_bytes_left_device": pinned_raw,
                    "camera_uplink_bytes_per_request_ours": uplink[OURS],
                    "camera_uplink_bytes_per_request_ship_frame": uplink[SHIP],
                    "camera_frame_bytes": float(frame_bytes)},
        **plans_record(services, results, replanned,
                       {label: {"link_bytes_per_request": link[label]} for label in services}),
        "max_abs_output_difference": diff,
    }


def run(stack: Stack, out: TextIO, quick: bool) -> dict[str, Any]:
    """A 256 x 256 frame; 40 requests per alternative (20 with ``quick``)."""
    return measure(stack, out, camera_net(256, 64, 6), 256, requests=20 if quick else 40)


SCENARIO = Scenario("camera", "frames arrive on a battery camera: run the stem there, send the small cut",
                    STACK, run)
