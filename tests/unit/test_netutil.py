"""``treeline_common.netutil.free_port``: listening ports outside the OS's ephemeral range."""

from __future__ import annotations

import random
import socket

import pytest

from treeline_common import netutil


def test_free_ports_are_bindable_and_below_the_ephemeral_range() -> None:
    top = netutil._ephemeral_floor()
    ports = {netutil.free_port() for _ in range(20)}
    assert len(ports) > 1  # picked at random, not one fixed port
    for port in ports:
        if top > netutil.LISTEN_PORTS_FLOOR + 100:
            assert netutil.LISTEN_PORTS_FLOOR <= port < top
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", port))  # still free


def test_a_taken_port_is_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as held:
        held.bind(("127.0.0.1", 0))
        taken = held.getsockname()[1]
        other = netutil.free_port()
        draws = iter([taken, other])
        monkeypatch.setattr(netutil, "_ephemeral_floor", lambda: 65535)
        monkeypatch.setattr(random.SystemRandom, "randrange", lambda self, a, b: next(draws))
        assert netutil.free_port() == other  # the held one was tried and refused
