"""Registry throughput: small models registered and read back through the root's REST API.

Run ``python -m benchmarks.registry_ops [--quick] [--json PATH]``: starts the embedded MongoDB wire
server (``nx-27017``) and a root on it, then for ``duration_s`` (5 s; 2 s with ``--quick``) one
client in a loop registers a small ONNX model (``POST /api/models/<name>/versions``, a new name
every 20 versions) and shows it (``GET .../versions/<n>``). ``registry_ops_per_s`` counts both
requests as one operation each: (registers + shows) / elapsed seconds, one client, sequential.
Also ``registry_register_ms_p50`` and ``registry_show_ms_p50``.

:func:`registry_ops_per_s` takes any root URL (``benchmarks.lifecycle`` reuses it on its own stack).
"""

from __future__ import annotations

import contextlib
import logging
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from onnx import TensorProto, helper

from benchmarks.report import RESULTS_DIR, benchmark_parser, report
from treeline_cli.root_client import RootClient, login
from treeline_common.mongo_server import start_mongo_server
from treeline_common.netutil import free_port, poll_until

log = logging.getLogger(__name__)

DEFAULT_DURATION_S = 5.0
VERSIONS_PER_NAME = 20
DEV_ACCOUNT = ("Admin", "Admin")


def small_model(seed: int) -> bytes:
    """``y = relu(x) * s`` (x: [1, 16] float32), a different ``s`` per seed: a ~200-byte model."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16])
    scale = helper.make_tensor("s", TensorProto.FLOAT, [1], [1.0 + seed])
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Mul", ["r", "s"], ["y"])]
    graph = helper.make_graph(nodes, "small", [x], [y], initializer=[scale])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def measure_registry(client: RootClient, duration_s: float = DEFAULT_DURATION_S,
                     prefix: str = "bench") -> dict[str, Any]:
    """Register + show small models for ``duration_s`` seconds; the figures (see the module doc)."""
    register_ms: list[float] = []
    show_ms: list[float] = []
    run = f"{prefix}-{int(time.time() * 1000) % 10**8}"
    started = time.perf_counter()
    deadline = started + duration_s
    i = 0
    while time.perf_counter() < deadline:
        name = f"{run}-{i // VERSIONS_PER_NAME}"
        t0 = time.perf_counter()
        doc = client.register_model(name, small_model(i))
        t1 = time.perf_counter()
        shown = client.model_version(name, doc["version"])
        t2 = time.perf_counter()
        if shown["sha256"] != doc["sha256"]:
            raise RuntimeError(f"{name}:{doc['version']} read back with another digest")
        register_ms.append((t1 - t0) * 1e3)
        show_ms.append((t2 - t1) * 1e3)
        i += 1
    elapsed = time.perf_counter() - started
    return {"registry_ops_per_s": round(2 * i / elapsed, 1), "registry_ops": 2 * i,
            "registry_elapsed_s": round(elapsed, 2),
            "registry_register_ms_p50": round(statistics.median(register_ms), 2) if register_ms else None,
            "registry_show_ms_p50": round(statistics.median(show_ms), 2) if show_ms else None}


def registry_ops_per_s(root_url: str, duration_s: float = DEFAULT_DURATION_S,
                       token: str | None = None) -> float:
    """Registry operations per second (register + show, each one op) against the root at
    ``root_url``, one sequential client; ``token`` or the development account's."""
    client = RootClient(root_url, timeout=30, token=token or login(root_url, *DEV_ACCOUNT)["token"])
    return float(measure_registry(client, duration_s)["registry_ops_per_s"])


@contextlib.contextmanager
def embedded_root(work: Path) -> Iterator[str]:
    """A root (``python -m root_orchestrator``, development mode) on a fresh embedded MongoDB
    server; yields its URL. Both are stopped on exit."""
    mongo = start_mongo_server(work / "mongo")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_file = (work / "root.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "root_orchestrator", "--host", "127.0.0.1",
                             "--port", str(port), "--data-dir", str(work / "root"),
                             "--store-url", mongo.db_url("bench"), "--log-level", "WARNING"],
                            stdout=subprocess.DEVNULL, stderr=log_file)
    try:
        def healthy() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"root exited: {(work / 'root.log').read_text(errors='replace')[-2000:]}")
            with contextlib.suppress(Exception):
                return bool(RootClient(url, timeout=1).health())
            return False

        poll_until(healthy, timeout=60, what="root health")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log_file.close()
        mongo.stop()


def main(argv: Sequence[str] | None = None) -> int:
    parser = benchmark_parser(__doc__, "2 s instead of 5")
    parser.add_argument("--json", type=Path, default=None,
                        help=f"where to write the JSON report (default: {RESULTS_DIR}/registry_ops.json "
                             "for a full run, none for --quick)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    duration = 2.0 if args.quick else DEFAULT_DURATION_S
    with tempfile.TemporaryDirectory(prefix="treeline-registry-") as work, embedded_root(Path(work)) as url:
        client = RootClient(url, timeout=30, token=login(url, *DEV_ACCOUNT)["token"])
        result = measure_registry(client, duration)
    result["registry_store"] = "embedded MongoDB wire server (nx-27017)"
    path = args.json or (None if args.quick else RESULTS_DIR / "registry_ops.json")
    if path is None:
        for key, value in sorted(result.items()):
            print(f"{key}  {value}")
    else:
        report(result, path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
