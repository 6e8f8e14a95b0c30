"""Hardened-API figures against a real root process: upload memory and a Schemathesis fuzz run.

``python -m benchmarks.security`` reports them with the authentication figures; run this module
alone with ``python -m benchmarks.hardening [--quick] [--upload-mb N] [--examples N] [--json PATH]``
(default ``benchmarks/results/hardening.json``):

- ``upload_peak_rss_mb``: how far the root process's RSS rose above idle while a 200 MB model
  was uploaded (chunked; sampled every 20 ms). Goal: <= 50 MB (the body goes to disk in 1 MiB
  chunks; when it was buffered, RSS rose by about 360 MB). ``upload_idle_rss_mb``, ``upload_mb``,
  ``upload_s`` and ``upload_status`` say what was measured.
- ``schemathesis_cases``: requests Schemathesis generated from the root's OpenAPI document
  (``GET /api/openapi.json``; positive and negative cases per operation) and sent, with the token
  of ``Admin``/``Admin`` when the root has ``POST /api/auth/login`` (development mode);
  ``server_errors``: how many were answered 5xx or dropped (goal 0; ``server_error_samples``
  shows up to 20).

:func:`fuzz_root`, :func:`root_process` and :func:`write_big_onnx` are shared with
``tests/integration/test_fuzz_root.py``.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from benchmarks.report import add_json_option, benchmark_parser, report

log = logging.getLogger(__name__)

LOGIN = ("Admin", "Admin")


# -- a model of any size, written without holding it in memory -----------------------------------

def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    return _varint((number << 3) | 2) + _varint(len(payload)) + payload


def write_big_onnx(path: Path, size_bytes: int) -> int:
    """A valid ONNX model ``y = x + w`` whose weight ``w`` makes the file about ``size_bytes`` long.

    The weight is written in 1 MiB pieces: the file is a small ModelProto followed by a second
    ``graph`` field holding only the initializer (protobuf merges repeated message fields; onnx
    and onnxruntime load it). Returns the file size."""
    import onnx
    from onnx import TensorProto, helper

    floats = max(1, size_bytes // 4)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [floats])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [floats])
    graph = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "big", [x], [y])
    head = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()
    tensor_head = (_varint((1 << 3) | 0) + _varint(floats)  # dims
                   + _varint((2 << 3) | 0) + _varint(onnx.TensorProto.FLOAT)  # data_type
                   + _field(8, b"w"))  # name
    raw_len = floats * 4
    raw_head = _varint((9 << 3) | 2) + _varint(raw_len)  # raw_data
    tensor_len = len(tensor_head) + len(raw_head) + raw_len
    init_head = _varint((5 << 3) | 2) + _varint(tensor_len)  # GraphProto.initializer
    graph_head = _varint((7 << 3) | 2) + _varint(len(init_head) + tensor_len)  # ModelProto.graph
    zeros = bytes(1 << 20)
    with path.open("wb") as out:
        out.write(head + graph_head + init_head + tensor_head + raw_head)
        left = raw_len
        while left:
            step = min(left, len(zeros))
            out.write(zeros[:step])
            left -= step
    return path.stat().st_size


def file_chunks(path: Path, chunk: int = 1 << 20) -> Iterator[bytes]:
    """The file in pieces: requests sends a generator chunked (no Content-Length)."""
    with path.open("rb") as fh:
        while piece := fh.read(chunk):
            yield piece


# -- a real root process ---------------------------------------------------------------------------

@dataclass
class RootProcess:
    url: str
    pid: int
    data_dir: Path
    log_path: Path

    def headers(self) -> dict[str, str]:
        token = login(self.url)
        return {"Authorization": f"Bearer {token}"} if token else {}


@contextmanager
def root_process(data_dir: Path, env: dict[str, str] | None = None) -> Iterator[RootProcess]:
    """``python -m root_orchestrator`` on a free loopback port (development mode), stopped with
    SIGTERM afterwards. Its log goes to a file beside ``data_dir`` (a pipe nobody reads would
    block the root once full)."""
    from treeline_common.netutil import free_port, poll_until

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = data_dir.parent / f"{data_dir.name}-root.log"
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen([sys.executable, "-m", "root_orchestrator", "--host", "127.0.0.1",
                                 "--port", str(port), "--data-dir", str(data_dir), "--log-level", "WARNING"],
                                stdout=subprocess.DEVNULL, stderr=log_file, env={**os.environ, **(env or {})})
    try:
        def healthy() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"root exited: {log_path.read_text(errors='replace')[-2000:]}")
            try:
                return requests.get(f"{url}/api/health", timeout=1).status_code == 200
            except requests.RequestException:
                return False

        poll_until(healthy, timeout=60, what="root health")
        yield RootProcess(url, proc.pid, data_dir, log_path)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def login(url: str) -> str | None:
    """A bearer token for ``Admin``/``Admin`` when the root has ``POST /api/auth/login``, else None
    (a root without authentication)."""
    response = requests.post(f"{url}/api/auth/login", json={"username": LOGIN[0], "password": LOGIN[1]},
                             timeout=30)
    if response.status_code in (404, 405):
        return None
    response.raise_for_status()
    body = response.json()
    token = body.get("token") or body.get("access_token")
    if not isinstance(token, str):
        raise RuntimeError(f"login answered no token: {sorted(body)}")
    return token


# -- upload memory ---------------------------------------------------------------------------------

def rss_mb(pid: int) -> float:
    import psutil

    return float(psutil.Process(pid).memory_info().rss) / (1 << 20)


def upload_peak_rss(root: RootProcess, size_mb: int, work_dir: Path, name: str = "big") -> dict[str, Any]:
    """Upload a ``size_mb`` MB model (chunked) while sampling the root's RSS every 20 ms."""
    model = work_dir / f"{name}.onnx"
    size = write_big_onnx(model, size_mb << 20)
    headers = {**root.headers(), "Content-Type": "application/octet-stream"}
    time.sleep(0.5)
    idle = rss_mb(root.pid)
    peak = idle
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, rss_mb(root.pid))
            done.wait(0.02)

    sampler = threading.Thread(target=sample, name="rss-sampler", daemon=True)
    sampler.start()
    start = time.perf_counter()
    try:
        response = requests.post(f"{root.url}/api/models/{name}/versions", data=file_chunks(model),
                                 headers=headers, timeout=600)
    finally:
        elapsed = time.perf_counter() - start
        done.set()
        sampler.join()
        model.unlink(missing_ok=True)
    return {"upload_peak_rss_mb": round(peak - idle, 1), "upload_idle_rss_mb": round(idle, 1),
            "upload_mb": round(size / (1 << 20), 1), "upload_s": round(elapsed, 2),
            "upload_status": response.status_code}


# -- fuzzing the OpenAPI document ------------------------------------------------------------------

def fuzz_root(url: str, headers: dict[str, str], examples: int = 5, *,
              skip: Callable[[str, str], bool] | None = None, seed: int = 0) -> dict[str, Any]:
    """Schemathesis over ``GET /api/openapi.json``: ``examples`` positive and ``examples`` negative
    cases per operation, each sent with ``headers``; every 5xx (or dropped connection) is recorded.
    Deterministic for a given ``seed``. ``skip(method, path)`` leaves operations out."""
    import schemathesis
    from schemathesis.core.result import Ok
    from schemathesis.generation.modes import GenerationMode

    schema = schemathesis.openapi.from_url(f"{url}/api/openapi.json", headers=headers, timeout=30)
    tally = {"cases": 0, "operations": 0}
    server_errors: list[dict[str, Any]] = []
    session = requests.Session()
    for result in schema.get_all_operations():
        if not isinstance(result, Ok):
            log.warning("fuzz: an operation Schemathesis cannot read: %s", result)
            continue
        operation = result.ok()
        label = f"{operation.method.upper()} {operation.path}"
        if skip is not None and skip(operation.method.upper(), operation.path):
            continue
        tally["operations"] += 1
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            try:
                _fuzz_operation(operation.as_strategy(generation_mode=mode), label, url, session, headers,
                                examples, seed, tally, server_errors)
            except Exception as exc:  # noqa: BLE001 - a strategy Schemathesis cannot build is skipped, not fatal
                # Unsatisfiable: no negative case exists (an operation without parameters or body)
                level = logging.DEBUG if type(exc).__name__ == "Unsatisfiable" else logging.WARNING
                log.log(level, "fuzz %s (%s): %s: %s", label, mode.value, type(exc).__name__, exc)
    return {"schemathesis_cases": tally["cases"], "server_errors": len(server_errors),
            "fuzz_operations": tally["operations"], "server_error_samples": server_errors[:20]}


def _fuzz_operation(strategy: Any, label: str, url: str, session: requests.Session,
                    headers: dict[str, str], examples: int, seed: int, tally: dict[str, int],
                    server_errors: list[dict[str, Any]]) -> None:
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as hypothesis_seed

    @hypothesis_seed(seed)
    @settings(max_examples=examples, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(case=strategy)
    def send(case: Any) -> None:
        try:
            response = case.call(base_url=url, session=session, headers=headers, timeout=30)
        except requests.RequestException as exc:  # a dropped connection counts as a server error
            server_errors.append({"operation": label, "status": None, "error": str(exc)[:200]})
            return
        tally["cases"] += 1
        if response.status_code >= 500:
            server_errors.append({"operation": label, "status": response.status_code,
                                  "body": response.text[:300],
                                  "request": {"path": case.formatted_path, "query": case.query,
                                              "body": repr(case.body)[:300]}})

    send()


def run(quick: bool = False, upload_mb: int = 200, examples: int | None = None) -> dict[str, Any]:
    """Both measurements on one fresh root process (a temporary data dir)."""
    examples = examples if examples is not None else (3 if quick else 10)
    result: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="treeline-hardening-") as tmp:
        work = Path(tmp)
        with root_process(work / "root") as root:
            result.update(upload_peak_rss(root, upload_mb, work))
            result.update(fuzz_root(root.url, root.headers(), examples))
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = benchmark_parser(__doc__, "3 fuzz examples per operation and mode")
    parser.add_argument("--upload-mb", type=int, default=200)
    parser.add_argument("--examples", type=int, default=None, help="fuzz examples per operation and mode")
    add_json_option(parser, "hardening")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    result = run(args.quick, args.upload_mb, args.examples)
    report(result, args.json)
    return 0 if result["server_errors"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
