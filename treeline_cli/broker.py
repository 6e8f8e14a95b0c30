"""Start an MQTT broker as a child process: Mosquitto when installed, else amqtt.

Mosquitto is the broker for tests and production; the embedded pure-Python amqtt broker
is only the zero-setup fallback (it handles roughly a fifth of Mosquitto's message rate).
Either way the broker is a real MQTT server in its own OS process on a loopback port.

Identities (``auth``, Mosquitto only): the broker refuses anonymous clients and enforces the
password and ACL files of a :class:`~treeline_common.mqtt_acl.BrokerAuth` directory; each
(re)start writes the broker's pid to ``<auth dir>/broker.pid``, which is where the cluster sends
SIGHUP after adding a node's credentials (Mosquitto re-reads both files on SIGHUP). TLS (``tls``):
the listener speaks MQTT over TLS with the given certificate and key. The amqtt fallback enforces
neither: it starts open (and says so in a warning) when asked for either.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from treeline_common.mqtt_acl import PID_FILE, BrokerAuth, TlsFiles
from treeline_common.netutil import free_port, poll_until
from treeline_common.shutdown import die_with_parent

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




@dataclass
class BrokerProcess:
    """A running broker child process and where it listens.

    The handle outlives its process: :meth:`kill` (SIGKILL, an unclean crash: no session
    state is saved, clients' last wills are NOT sent by a dead broker) or :meth:`stop`
    (SIGTERM) end it, :meth:`freeze` / :meth:`thaw` hang and resume it, and :meth:`restart`
    starts the same command line on the same port again, so clients configured with :attr:`url`
    can reconnect. Fault-injection tests use this to take the broker away for a while.
    """

    kind: str  # "mosquitto" | "amqtt"
    host: str
    port: int
    process: subprocess.Popen[bytes]
    workdir: Path
    command: list[str] = field(default_factory=list)
    restarts: int = 0
    auth: BrokerAuth | None = None  # enforced identities (Mosquitto only)
    tls: TlsFiles | None = None  # the listener speaks TLS

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    @property
    def pid_file(self) -> Path:
        """Where the running broker's pid is written at every (re)start."""
        return (self.auth.auth_dir if self.auth is not None else self.workdir) / PID_FILE

    @property
    def log_path(self) -> Path:
        return self.workdir / f"{self.kind}.log"

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout: float = 5.0) -> None:
        """Terminate the broker (SIGTERM, then SIGKILL; a frozen one is thawed first); idempotent."""
        if self.process.poll() is None:
            self.process.terminate()
            self.thaw()
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

    def freeze(self) -> None:
        """SIGSTOP: the broker keeps its connections open and forwards nothing (a hung broker)."""
        if self.alive():
            self.process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        """SIGCONT after :meth:`freeze`."""
        if self.alive():
            self.process.send_signal(signal.SIGCONT)

    def restart(self, timeout: float = 15.0) -> None:
        """Start the same command on the same port again (stopping a live one first) and wait
        until it accepts connections. Raises if the port cannot be bound within ``timeout``."""
        self.stop()
        self.process = _launch(self.kind, self.command, self.workdir)
        _write_pid(self)
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
    prefer: str = "auto", port: int | None = None, workdir: Path | None = None, timeout: float = 15.0,
    *, auth: BrokerAuth | None = None, tls: TlsFiles | None = None,
) -> BrokerProcess:
    """Start a broker on ``127.0.0.1:port`` (a free port by default) and wait until it accepts.

    ``prefer`` is ``auto`` (Mosquitto if installed, else amqtt), ``mosquitto`` or ``amqtt``.
    ``auth``: refuse anonymous clients and enforce its password and ACL files, which must exist
    (:meth:`BrokerAuth.write`). ``tls``: the listener speaks TLS (``tls.cert``/``tls.key`` are the
    broker's; ``tls.ca`` verifies client certificates that are presented).
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
        conf.write_text(mosquitto_conf(port, auth, tls))
        cmd = [binary, "-c", str(conf)]
    else:
        if auth is not None or tls is not None:
            log.warning("the amqtt fallback broker enforces no MQTT identities, ACL or TLS: it runs open "
                        "(install mosquitto)")
            auth = tls = None
        cmd = [sys.executable, "-c", AMQTT_RUNNER, str(port)]
    process = _launch(kind, cmd, workdir)
    broker = BrokerProcess(kind=kind, host="127.0.0.1", port=port, process=process, workdir=workdir,
                           command=cmd, auth=auth, tls=tls)
    _write_pid(broker)
    try:
        _wait_accepting(broker, timeout)
    except Exception:
        broker.stop()
        raise
    log.info("%s broker listening on %s", kind, broker.url)
    return broker


def mosquitto_conf(port: int, auth: BrokerAuth | None = None, tls: TlsFiles | None = None) -> str:
    """The Mosquitto configuration of one loopback listener (see :func:`start_broker`)."""
    lines = [f"listener {port} 127.0.0.1"]
    if tls is not None:
        lines += [f"{key} {path}" for key, path in (("cafile", tls.ca), ("certfile", tls.cert),
                                                     ("keyfile", tls.key)) if path]
    # Run as root, Mosquitto switches to the "mosquitto" user: that clears the parent-death signal
    # (a killed `treeline up` would leave it running) and that user cannot read the 0600 password
    # files of the user who wrote them. Stay that user (a warning in its log says so).
    if os.geteuid() == 0:
        lines.append("user root")
    if auth is None:
        lines.append("allow_anonymous true")
    else:
        lines += ["allow_anonymous false", f"password_file {auth.password_file}", f"acl_file {auth.acl_file}"]
    lines += ["persistence false", "log_dest stderr", "max_queued_messages 10000"]
    return "\n".join(lines) + "\n"


def _write_pid(broker: BrokerProcess) -> None:
    """Record the broker's pid where the cluster looks for it (before it accepts: nobody races it)."""
    broker.pid_file.parent.mkdir(parents=True, exist_ok=True)
    broker.pid_file.write_text(f"{broker.process.pid}\n")


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
