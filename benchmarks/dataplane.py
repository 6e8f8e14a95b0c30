"""Data-plane security benchmark: what authenticators and CURVE cost per hop, on loopback.

Run ``python -m benchmarks.dataplane [--quick] [--json PATH]``. Prints a table and writes
JSON (default ``benchmarks/results/dataplane.json``). Every figure is measured in this run
on real zmq sockets and the real :class:`~node_engine.data_plane.server.DataPlaneServer`;
goals in brackets.

A **hop** is one request of a 100 KB float32 tensor (25,600 values) from a
:class:`~node_engine.data_plane.client.TensorClient` to a node whose stage answers with a
small tensor (the sum), one request in flight: the round trip a forwarding stage waits for.
The stage computes next to nothing, so the figures are the data plane's own. Modes:

- ``plain``: plain TCP, no authenticator (the data plane before security);
- ``auth``: the stage requires the deployment's data key; the client signs (HMAC-SHA256
  over the header and a SHA-256 of the frames), the node verifies before admitting;
- ``curve``: the node's CURVE socket (ZeroMQ CURVE: Curve25519 key exchange, then
  XSalsa20-Poly1305 per message), no authenticator;
- ``auth_curve``: both, what an inner stage of a ``privacy.encrypt_tensors`` deployment does.

Modes are interleaved in rounds so drift of the machine hits them alike. Reported:
``hop_<mode>_p50_ms`` / ``_p90_ms``, ``<mode>_ratio`` (p50 over plain's),
``auth_hop_overhead_ms`` and ``curve_hop_overhead_ms`` [<= 0.5] (p50 minus plain's p50), and
``auth_curve_hop_overhead_ms``. ``pipeline_<mode>_p50_ms`` cross-checks with a two-node
pipeline where only the node-to-node hop changes mode (the caller reaches the open entry in
plain TCP every time; the forwarding stage signs and the next verifies). ``mac_us`` holds
the cost of the authenticator itself for 100 KB (sign = verify), with keyed BLAKE2b for
comparison: the reason the wire uses HMAC-SHA256 (``treeline_common.tensor_wire``).
``link_estimate_error`` [<= 0.10] and the ``link_*`` figures come from :mod:`benchmarks.links`;
``node_idle_rss_mb`` [<= 80] and ``node_idle_cpu_percent`` [<= 1] from :mod:`benchmarks.node_idle`;
``serving_overhead_ratio`` [<= 1.10] (whole MobileNetV2 through one node over raw
``session.run``), ``hop_overhead_ms`` [<= 0.3] (p50 per extra stage, 100 KB),
``local_hop_overhead_ms`` (the same with the stages on one node) and
``pipeline_efficiency_k2/k3/k4`` [>= 0.90] from :mod:`benchmarks.serving`; ``compressed_link_speedup``
and ``compressed_output_max_abs_diff`` (MobileNetV2 cut in two over an emulated rpi4 uplink, best of
fp16/int8) from :mod:`benchmarks.compression`; ``v2_http_overhead_ms`` [<= 1] (the KServe v2 REST entry
over the zmq client, MobileNetV2, on a real stack) and its per-path figures from
:mod:`benchmarks.inference_v2`.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import statistics
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from typing import Any

import numpy as np
import zmq

from benchmarks.compression import run as measure_compression
from benchmarks.inference_v2 import run as measure_v2
from benchmarks.links import run as measure_links
from benchmarks.node_idle import run as measure_node_idle
from benchmarks.report import add_json_option, benchmark_parser, report
from benchmarks.serving import PassStage
from benchmarks.serving import run as measure_serving
from node_engine.data_plane.client import TensorClient
from node_engine.data_plane.security import StageAccess
from node_engine.data_plane.server import DataPlaneServer
from node_engine.stages import LoadedStage, StageRunner, StageTable
from treeline_common.messages import NextStage
from treeline_common.tensor_wire import authenticator, frames_digest, pack, signed_by, unpack

TENSOR_BYTES = 100 * 1024
MODES = ("plain", "auth", "curve", "auth_curve")
DATA_KEY = bytes(range(32))
CURVE_GOAL_MS = 0.5


class _Sum:
    """The benchmark's partition: one small output, so the reply costs next to nothing."""

    input_names: tuple[str, ...] = ("x",)
    output_names: tuple[str, ...] = ("y",)

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"y": np.asarray(inputs["x"].sum(), dtype=np.float32)}

    def close(self) -> None:
        pass


def _access(mode: str, entry: bool = False) -> StageAccess:
    if "auth" not in mode:
        return StageAccess()
    return StageAccess(data_key=DATA_KEY, entry=entry, encrypted="curve" in mode)


def _stage(key: str, session: Any, access: StageAccess, nxt: NextStage | None = None) -> LoadedStage:
    deployment, generation, index = key.split("/")
    return LoadedStage(key, deployment, int(index), "x", int(generation), session, nxt, access=access)


@contextmanager
def _node(name: str, stages: list[LoadedStage]) -> Iterator[DataPlaneServer]:
    table = StageTable()
    for stage in stages:
        table.put(stage)
    server = DataPlaneServer(table, StageRunner(), name=name, curve_secret_key=zmq.curve_keypair()[1])
    server.start()
    try:
        yield server
    finally:
        server.close()


def _client(server: DataPlaneServer, mode: str) -> TensorClient:
    """A client of ``server`` as the sender of a ``mode`` hop talks to it."""
    if "curve" in mode:
        return TensorClient(server.curve_endpoint, curve_server_key=server.curve_public_key,
                            key=DATA_KEY.hex() if "auth" in mode else "")
    return TensorClient(server.endpoint, key=DATA_KEY.hex() if "auth" in mode else "")


def _time_requests(client: TensorClient, stage: str, x: np.ndarray, n: int) -> list[float]:
    samples = []
    for _ in range(n):
        started = time.perf_counter()
        client.infer(stage, {"x": x})
        samples.append((time.perf_counter() - started) * 1000.0)
    return samples


def _interleaved(clients: Mapping[str, tuple[TensorClient, str]], x: np.ndarray, n: int,
                 rounds: int, warmup: int) -> dict[str, list[float]]:
    """``n`` timed requests per mode, in ``rounds`` interleaved rounds, after ``warmup`` each."""
    for client, stage in clients.values():
        _time_requests(client, stage, x, warmup)
    samples: dict[str, list[float]] = {mode: [] for mode in clients}
    per_round = max(1, n // rounds)
    for _ in range(rounds):
        for mode, (client, stage) in clients.items():
            samples[mode].extend(_time_requests(client, stage, x, per_round))
    return samples


def single_hop(x: np.ndarray, n: int, rounds: int, warmup: int) -> dict[str, list[float]]:
    """Client -> node -> reply, one node per mode."""
    with ExitStack() as stack:
        clients = {}
        for mode in MODES:
            stage = f"hop-{mode}/1/0"
            server = stack.enter_context(_node(mode, [_stage(stage, _Sum(), _access(mode))]))
            clients[mode] = (stack.enter_context(_client(server, mode)), stage)
        return _interleaved(clients, x, n, rounds, warmup)


def pipeline(x: np.ndarray, n: int, rounds: int, warmup: int) -> dict[str, list[float]]:
    """Client -plain-> A (open entry) -mode-> B -> reply: only the node-to-node hop changes."""
    with ExitStack() as stack:
        clients = {}
        for mode in MODES:
            second = f"pipe-{mode}/1/1"
            node_b = stack.enter_context(_node(f"{mode}-b", [_stage(second, _Sum(), _access(mode))]))
            curve = "curve" in mode
            nxt = NextStage("b", node_b.curve_endpoint if curve else node_b.endpoint, second,
                            curve_server_key=node_b.curve_public_key if curve else "")
            first = f"pipe-{mode}/1/0"
            entry = _stage(first, PassStage(), _access(mode, entry=True), nxt)
            node_a = stack.enter_context(_node(f"{mode}-a", [entry]))
            clients[mode] = (stack.enter_context(TensorClient(node_a.endpoint)), first)
        return _interleaved(clients, x, n, rounds, warmup)


def mac_cost_us(x: np.ndarray, repeats: int) -> dict[str, float]:
    """Median microseconds to authenticate one 100 KB message (HMAC-SHA256 as on the wire; BLAKE2b)."""
    frames = pack("request", "r", {"x": x}, stage="s/1/0", key=DATA_KEY)
    header, _ = unpack([bytes(frames[0]), x.tobytes()])
    tensor = [x]

    def sign() -> None:
        authenticator(DATA_KEY, header, frames_digest(tensor))

    def verify() -> None:
        assert signed_by(header, tensor, [DATA_KEY])

    def blake() -> None:
        hashlib.blake2b(x.data.cast("B"), key=DATA_KEY, digest_size=32).digest()

    def sha() -> None:
        hmac.new(DATA_KEY, x.data.cast("B"), hashlib.sha256).digest()

    result = {}
    for name, fn in (("sign_hmac_sha256", sign), ("verify_hmac_sha256", verify),
                     ("raw_hmac_sha256", sha), ("raw_keyed_blake2b", blake)):
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            fn()
            times.append((time.perf_counter() - started) * 1e6)
        result[name] = statistics.median(times)
    return result


def _pct(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def run(quick: bool) -> dict[str, Any]:
    x = np.random.default_rng(0).standard_normal(TENSOR_BYTES // 4).astype(np.float32)
    n, rounds, warmup = (300, 6, 50) if quick else (2000, 20, 200)
    result: dict[str, Any] = {"tensor_bytes": int(x.nbytes), "requests_per_mode": n, "quick": quick}
    hop = single_hop(x, n, rounds, warmup)
    for mode, samples in hop.items():
        result[f"hop_{mode}_p50_ms"] = _pct(samples, 50)
        result[f"hop_{mode}_p90_ms"] = _pct(samples, 90)
    plain = result["hop_plain_p50_ms"]
    for mode in MODES[1:]:
        result[f"{mode}_ratio"] = result[f"hop_{mode}_p50_ms"] / plain
        result[f"{mode}_hop_overhead_ms"] = result[f"hop_{mode}_p50_ms"] - plain
    result["curve_goal_met"] = result["curve_hop_overhead_ms"] <= CURVE_GOAL_MS
    piped = pipeline(x, n // 2, rounds, warmup)
    for mode, samples in piped.items():
        result[f"pipeline_{mode}_p50_ms"] = _pct(samples, 50)
    for mode in MODES[1:]:
        overhead = result[f"pipeline_{mode}_p50_ms"] - result["pipeline_plain_p50_ms"]
        result[f"pipeline_{mode}_overhead_ms"] = overhead
    result["mac_us"] = mac_cost_us(x, 200 if quick else 2000)
    for name, us in result["mac_us"].items():
        result[f"mac_{name}_us"] = us
    result.update(measure_links(quick))  # link_estimate_error and its per-profile figures (benchmarks.links)
    result.update(measure_node_idle(quick))  # node_idle_rss_mb, node_idle_cpu_percent (benchmarks.node_idle)
    result.update(measure_serving(quick))  # serving_overhead_ratio, hop_overhead_ms, pipeline_efficiency_k*
    result.update(measure_compression(quick))  # compressed_link_speedup, compressed_output_max_abs_diff
    # v2_http_overhead_ms (the best stable address: entry node or cluster) and the per-path figures
    result.update({k: v for k, v in measure_v2(quick).items() if k.startswith("v2_")})
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = benchmark_parser(__doc__, "fewer requests (about 30 s)")
    add_json_option(parser, "dataplane")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    result = run(args.quick)
    report(result, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

