"""Node idle footprint: resident memory and CPU of a real node engine, registered and idle.

Run ``python -m benchmarks.node_idle [--quick] [--json PATH]`` (its figures are also part of
``python -m benchmarks.dataplane``). A real ``python -m node_engine --profile native`` process
registers with a stand-in cluster (a stdlib HTTP server answering ``POST /api/node/register``),
connects to a real broker (Mosquitto when installed) and publishes telemetry every 2 s with no
stage loaded. Once its second telemetry message has arrived, the process is watched for
``window`` seconds (20 s; 6 s with ``--quick``) through psutil. Reported:

- ``node_idle_rss_mb`` [<= 80]: the highest resident set size seen (MiB), sampled every 0.5 s;
- ``node_idle_cpu_percent`` [<= 1]: user + system CPU time over the window's wall time, in % of
  one core;
- ``node_idle_telemetry_messages``: telemetry messages received during the window (about
  window / 2: the cadence the CPU figure was paid for).
"""

from __future__ import annotations

import http.server
import json
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import psutil

from benchmarks.report import add_json_option, benchmark_parser, report
from treeline_cli.broker import BrokerProcess, start_broker
from treeline_common import topics

RSS_GOAL_MB = 80.0
CPU_GOAL_PERCENT = 1.0
TELEMETRY_INTERVAL = 2.0
START_TIMEOUT = 60.0
REPO = Path(__file__).resolve().parents[1]


@contextmanager
def _stand_in_cluster(broker: BrokerProcess) -> Iterator[str]:
    """``POST /api/node/register`` answered with the broker's address; yields the base URL."""
    answer = json.dumps({"node_id": "node-idle", "cluster_id": "bench", "mqtt_host": broker.host,
                         "mqtt_port": broker.port, "telemetry_interval": TELEMETRY_INTERVAL}).encode()

    class Register(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Register)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


class _TelemetryCounter:
    """Counts telemetry messages of ``node-idle``; :meth:`wait_for` blocks until ``n`` arrived."""

    def __init__(self, broker: BrokerProcess) -> None:
        self.count = 0
        self._cond = threading.Condition()
        self._client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-node-idle")
        self._client.suppress_exceptions = True
        self._client.on_message = self._on_message
        self._client.connect(broker.host, broker.port)
        self._client.subscribe(topics.information("node-idle"))
        self._client.loop_start()

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        with self._cond:
            self.count += 1
            self._cond.notify_all()

    def wait_for(self, n: int, timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self.count >= n, timeout)

    def close(self) -> None:
        self._client.loop_stop()
        self._client.disconnect()


def measure(window: float) -> dict[str, Any]:
    """Start a broker, a stand-in cluster and a node engine; watch the idle node for ``window`` s."""
    with tempfile.TemporaryDirectory(prefix="treeline-idle-") as tmp:
        broker = start_broker("auto", workdir=Path(tmp) / "broker")
        counter: _TelemetryCounter | None = None
        process: subprocess.Popen[bytes] | None = None
        try:
            counter = _TelemetryCounter(broker)
            with _stand_in_cluster(broker) as url:
                process = subprocess.Popen(
                    [sys.executable, "-m", "node_engine", "--cluster-url", url, "--name", "idle",
                     "--profile", "native", "--telemetry-interval", str(TELEMETRY_INTERVAL),
                     "--data-dir", str(Path(tmp) / "node"), "--log-level", "WARNING"],
                    cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                if not counter.wait_for(2, START_TIMEOUT):
                    raise RuntimeError("the node engine sent no telemetry within 60 s")
                watched = psutil.Process(process.pid)
                first, start, seen = watched.cpu_times(), time.monotonic(), counter.count
                rss = watched.memory_info().rss
                while time.monotonic() - start < window:
                    time.sleep(0.5)  # sampling period of the RSS, not a wait for an event
                    rss = max(rss, watched.memory_info().rss)
                last, wall = watched.cpu_times(), time.monotonic() - start
                messages = counter.count - seen
        finally:
            if process is not None:
                process.kill()
                process.wait(10)
            if counter is not None:
                counter.close()
            broker.stop()
    cpu = (last.user - first.user) + (last.system - first.system)
    return {
        "node_idle_rss_mb": rss / (1024 * 1024),
        "node_idle_cpu_percent": 100.0 * cpu / wall,
        "node_idle_window_s": wall,
        "node_idle_telemetry_messages": messages,
        "node_idle_rss_goal_met": rss / (1024 * 1024) <= RSS_GOAL_MB,
        "node_idle_cpu_goal_met": 100.0 * cpu / wall <= CPU_GOAL_PERCENT,
    }


def run(quick: bool) -> dict[str, Any]:
    return measure(6.0 if quick else 20.0)


def main(argv: Sequence[str] | None = None) -> int:
    parser = benchmark_parser(__doc__, "a 6 s window instead of 20 s")
    add_json_option(parser, "node_idle")
    args = parser.parse_args(argv)
    report(run(args.quick), args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
