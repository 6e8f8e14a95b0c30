"""Port checks a stack runs before it starts anything, so that two stacks never collide.

A port the stack needs (the root's, every cluster's, every broker's when it is fixed) that
another process holds fails at once with :class:`PortInUse`, which names the port and, when a Treeline process
answers there, which.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import Any

from treeline_cli.stack_config import StackConfig
from treeline_common.http import call_json


class PortInUse(RuntimeError):
    """A port the stack needs is held by another process; raised before anything starts.

    ``holder`` says who answers there when it is a Treeline process (``a Treeline root,
    instance 1f2e...``), else is empty.
    """

    def __init__(self, claim: PortClaim, holder: str = "") -> None:
        who = f" by {holder}" if holder else " by another process"
        super().__init__(f"port {claim.port} ({claim.role}) is already in use{who}")
        self.claim = claim
        self.holder = holder


@dataclass(frozen=True)
class PortClaim:
    """A port the stack will listen on: which process, and the setting that chose it."""

    port: int
    role: str  # root | cluster | broker | cluster-<i> | broker-<i> (cluster i > 1 and its broker)
    setting: str  # root_port | cluster_port | broker_port

    def describe(self) -> str:
        """The setting, and the role when the setting does not say it (``cluster_port (cluster-2)``)."""
        return self.setting if self.setting == f"{self.role}_port" else f"{self.setting} ({self.role})"


def port_claims(config: StackConfig) -> list[PortClaim]:
    """Every fixed port the stack will listen on: the root's, each cluster's and each broker's.
    Node data ports are picked free by each node (never fixed by ``up``), and a broker on port 0
    takes a free one, so neither is claimed."""
    claims = [PortClaim(config.root_port, "root", "root_port")]
    for index, port in enumerate(config.cluster_ports(), start=1):
        claims.append(PortClaim(port, numbered("cluster", index), "cluster_port"))
    if not config.mqtt_url:
        for index, port in enumerate(config.broker_ports(), start=1):
            if port:
                claims.append(PortClaim(port, numbered("broker", index), "broker_port"))
    return claims


def numbered(role: str, index: int) -> str:
    """``cluster`` for cluster 1 (the name a single-cluster stack always had), ``cluster-2`` after."""
    return role if index == 1 else f"{role}-{index}"


def port_is_free(host: str, port: int) -> bool:
    """Whether ``host:port`` can be bound now, the way our servers bind it (``SO_REUSEADDR``:
    a port left in TIME_WAIT by a stopped stack counts as free, a listening one does not)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def port_holder(host: str, port: int, timeout: float = 0.5) -> str:
    """``a Treeline root (instance 1f2e3d4c)`` when a Treeline process answers ``GET /api/health``
    on the port, else ``""``. Bounded by ``timeout``: it only makes an error message better."""
    try:
        answer: Any = call_json("GET", f"http://{host}:{port}/api/health", timeout=timeout)
    except Exception:  # noqa: BLE001 - not HTTP, not ours, or not answering: nothing to say
        return ""
    if not isinstance(answer, dict) or "instance_id" not in answer:
        return ""
    name = str(answer.get("name") or "process")
    kind = "root" if name == "root" else f"cluster ({name})"
    return f"a Treeline {kind}, instance {str(answer['instance_id'])[:8]}"


def check_ports(config: StackConfig) -> None:
    """Raise before anything starts if the stack cannot have all of its ports.

    ValueError when two claims name the same port (a usage error); :class:`PortInUse` for the
    first port another process holds. Fast (one bind per port, plus one short health probe of
    a busy port), so ``treeline up`` fails well within 2 seconds.
    """
    claims = port_claims(config)
    for index, claim in enumerate(claims):
        for other in claims[:index]:
            if other.port == claim.port:
                raise ValueError(f"{other.describe()} and {claim.describe()} are both {claim.port}")
    for claim in claims:
        if not port_is_free(config.host, claim.port):
            raise PortInUse(claim, port_holder(config.host, claim.port))
