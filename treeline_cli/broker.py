"""Start an MQTT broker as a child process: Mosquitto when installed, else amqtt.

Mosquitto is the broker for tests and production; the embedded pure-Python amqtt broker
is only the zero-setup fallback (it handles roughly a fifth of Mosquitto's message rate).
Either way the broker is a real MQTT server in its own OS process on a loopback port.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from treeline_common.netutil import free_port, poll_until

log = logging.getLogger(__name__)

AMQTT_RUNNER = """
import asyncio, sys
from amqtt.broker import Broker
from treeline_common.logs import setup_logging

setup_logging("INFO")  # plain lines, like every other process of the stack

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
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class BrokerProcess:
    """A running broker child process and where it listens.

    The handle outlives its process: :meth:`kill` (SIGKILL, an unclean crash: no session
    state is saved, clients' last wills are NOT sent by a dead broker) or :meth:`stop`
    (SIGTERM) end it, and :meth:`restart` starts the same command line on the same port
    again, so clients configured with :attr:`url` can reconnect. Fault-injection tests
    use this to take the broker away for a while.
    """

    kind: str  # "mosquitto" | "amqtt"
    host: str
    port: int
    process: subprocess.Popen[bytes]
    workdir: Path
    command: list[str] = field(default_factory=list)
    restarts: int = 0

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / f"{self.kind}.log"

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout: float = 5.0) -> None:
        """Terminate the broker (SIGTERM, then SIGKILL); idempotent."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=timeout)

    def kill(self, timeout: float = 5.0) -> None:
        """SIGKILL the broker and reap it (a crash, not a shutdown); idempotent."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=timeout)

    def restart(self, timeout: float = 15.0) -> None:
        """Start the same command on the same port again (stopping a live one first) and wait
        until it accepts connections. Raises if the port cannot be bound within ``timeout``."""
        self.stop()
        self.process = _launch(self.kind, self.command, self.workdir)
        self.restarts += 1
        try:
            _wait_accepting(self, timeout)
        except Exception:
            self.stop()
            raise
        log.info("%s broker restarted on %s (restart %d)", self.kind, self.url, self.restarts)


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
    process = _launch(kind, cmd, workdir)
    broker = BrokerProcess(kind=kind, host="127.0.0.1", port=port, process=process, workdir=workdir,
                           command=cmd)
    try:
        _wait_accepting(broker, timeout)
    except Exception:
        broker.stop()
        raise
    log.info("%s broker listening on %s", kind, broker.url)
    return broker


def _launch(kind: str, cmd: list[str], workdir: Path) -> subprocess.Popen[bytes]:
    with open(workdir / f"{kind}.log", "ab") as log_file:  # the child keeps its own descriptor
        return subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                preexec_fn=die_with_parent)


def _wait_accepting(broker: BrokerProcess, timeout: float) -> None:
    def accepting() -> bool:
        if broker.process.poll() is not None:
            code = broker.process.returncode
            raise RuntimeError(f"{broker.kind} exited with {code}; see {broker.log_path}")
        with socket.create_connection((broker.host, broker.port), timeout=0.5):
            return True

    poll_until(accepting, timeout, what=f"{broker.kind} on port {broker.port}")
