"""Start an MQTT broker as a child process: Mosquitto when installed, else amqtt.

Mosquitto is the broker for tests and production; the embedded pure-Python amqtt broker
is only the zero-setup fallback (it handles roughly a fifth of Mosquitto's message rate).
Either way the broker is a real MQTT server in its own OS process on a loopback port.
"""

from __future__ import annotations

import ctypes
import logging
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from treeline_common.netutil import free_port, poll_until

log = logging.getLogger(__name__)

AMQTT_RUNNER = """
import asyncio, sys
from amqtt.broker import Broker

async def main(port):
    config = {
        "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{port}"}},
        "sys_interval": 0,
        "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
    }
    broker = Broker(config)
    await broker.start()
    await asyncio.Event().wait()

asyncio.run(main(int(sys.argv[1])))
"""


_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Ask the kernel to SIGTERM this child when its parent dies, so no child outlives
    a killed ``treeline up`` (Linux; elsewhere a no-op)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass


@dataclass
class BrokerProcess:
    """A running broker child process and where it listens."""

    kind: str  # "mosquitto" | "amqtt"
    host: str
    port: int
    process: subprocess.Popen[bytes]
    workdir: Path

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    def stop(self, timeout: float = 5.0) -> None:
        """Terminate the broker (SIGTERM, then SIGKILL); idempotent."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=timeout)


def mosquitto_binary() -> str | None:
    """Path of the mosquitto binary, also looking in /usr/sbin (not on every PATH)."""
    return shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/usr/local/sbin")


def start_broker(
    prefer: str = "auto", port: int | None = None, workdir: Path | None = None, timeout: float = 15.0
) -> BrokerProcess:
    """Start a broker on ``127.0.0.1:port`` (a free port by default) and wait until it accepts.

    ``prefer`` is ``auto`` (Mosquitto if installed, else amqtt), ``mosquitto`` or ``amqtt``.
    """
    if prefer not in ("auto", "mosquitto", "amqtt"):
        raise ValueError(f"unknown broker kind {prefer!r}; known: auto, mosquitto, amqtt")
    port = port or free_port()
    workdir = Path(workdir or tempfile.mkdtemp(prefix="treeline-broker-"))
    workdir.mkdir(parents=True, exist_ok=True)
    binary = mosquitto_binary()
    kind = "mosquitto" if prefer == "mosquitto" or (prefer == "auto" and binary) else "amqtt"
    log_file = open(workdir / f"{kind}.log", "ab")  # noqa: SIM115 - owned by the child process
    if kind == "mosquitto":
        if not binary:
            raise FileNotFoundError("mosquitto is not installed (apt-get install mosquitto)")
        conf = workdir / "mosquitto.conf"
        conf.write_text(
            f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
            "log_dest stderr\nmax_queued_messages 10000\n"
        )
        cmd = [binary, "-c", str(conf)]
    else:
        cmd = [sys.executable, "-c", AMQTT_RUNNER, str(port)]
    process = subprocess.Popen(
        cmd, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, preexec_fn=die_with_parent
    )
    broker = BrokerProcess(kind=kind, host="127.0.0.1", port=port, process=process, workdir=workdir)

    def accepting() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"{kind} exited with {process.returncode}; see {workdir}/{kind}.log")
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True

    try:
        poll_until(accepting, timeout, what=f"{kind} on port {port}")
    except Exception:
        broker.stop()
        raise
    log.info("%s broker listening on %s", kind, broker.url)
    return broker
