"""Measured links against a real bottleneck: two network namespaces, a veth pair, ``tc ... tbf``.

The test creates namespaces ``tl-<random>-a`` and ``-b`` joined by a veth pair with a /30 in
10.199.0.0/16 that no host address or route touches, brings ``lo`` and the veth ends up, and
runs :mod:`netns_link_helper` in each: the node engine's real data plane server in ``b``, and
in ``a`` a native node's real :class:`~node_engine.links.LinkMonitor` holding a relay stage
routed to ``b`` (its deploy-time probe). Nothing is emulated, so only the link limits:

- without a qdisc the veth runs at memory speed (Gbit/s): the probe must read far above the
  rate the next test sets, or that test would not show the qdisc is what it measures;
- with ``tbf rate 20mbit`` on ``a``'s side (the sender's uplink, the direction a probe's burst
  travels) the probe must read 20 Mbit/s within 15 % (TCP/IP and Ethernet headers take ~4 %:
  19.2 measured here) and a small positive RTT.

Skipped unless running as root with ``ip``/``tc`` and a working ``ip netns add``. Namespaces
(and with them the veth pair and the qdisc) and processes are removed on teardown, pass or fail.
About 2 s.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import secrets
import selectors
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0,
                       reason="needs root to create network namespaces, veth pairs and tc qdiscs"),
    pytest.mark.skipif(not (shutil.which("ip") and shutil.which("tc")),
                       reason="needs iproute2 (ip and tc)"),
]

HELPER = Path(__file__).with_name("netns_link_helper.py")
RATE_MBIT = 20.0
TOLERANCE = 0.15
UNLIMITED_FACTOR = 5.0  # an unlimited veth must read at least this many times the tbf rate
MAX_RTT_MS = 5.0  # a veth hop is tens of µs; Python and zmq add a little on each side
POOL = ipaddress.ip_network("10.199.0.0/16")
STEP_TIMEOUT_S = 20.0
# `ip route` words that come before the destination (a plain unicast route starts with it)
ROUTE_TYPES = frozenset({"local", "broadcast", "unicast", "unreachable", "blackhole", "prohibit", "throw",
                         "anycast", "multicast", "nat"})


@dataclass(frozen=True)
class Link:
    """Two namespaces and the veth pair between them (``a`` sends, ``b`` serves)."""

    ns_a: str
    ns_b: str
    dev_a: str
    addr_a: str
    addr_b: str


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=STEP_TIMEOUT_S)
    if check and result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed: {result.stderr.strip()}")
    return result


def _host_networks() -> list[ipaddress.IPv4Network]:
    """Every IPv4 network the host has an address in or a route to (the default route left out)."""
    nets: list[ipaddress.IPv4Network] = []
    for line in _ip("-o", "-4", "addr", "show").stdout.splitlines():
        fields = line.split()
        nets.append(ipaddress.IPv4Interface(fields[fields.index("inet") + 1]).network)
    for line in _ip("-4", "route", "show", "table", "all").stdout.splitlines():
        fields = line.split()
        dest = fields[1] if fields[0] in ROUTE_TYPES else fields[0]
        with contextlib.suppress(ValueError):
            net = ipaddress.IPv4Network(dest, strict=False)
            if net.prefixlen > 0:
                nets.append(net)
    return nets


def _free_subnet() -> ipaddress.IPv4Network:
    """A /30 in :data:`POOL` that overlaps nothing the host uses."""
    used = _host_networks()
    for _ in range(64):
        offset = 4 * secrets.randbelow(POOL.num_addresses // 4)
        candidate = ipaddress.IPv4Network((int(POOL.network_address) + offset, 30))
        if not any(candidate.overlaps(net) for net in used):
            return candidate
    raise RuntimeError(f"no free /30 in {POOL}: the host uses {[str(n) for n in used if n.overlaps(POOL)]}")


@pytest.fixture(scope="module")
def link() -> Iterator[Link]:
    tag = secrets.token_hex(3)
    ns_a, ns_b = f"tl-{tag}-a", f"tl-{tag}-b"
    created: list[str] = []
    try:
        for ns in (ns_a, ns_b):
            added = _ip("netns", "add", ns, check=False)
            if added.returncode != 0:
                pytest.skip(f"ip netns add does not work here: {added.stderr.strip()}")
            created.append(ns)
        subnet = _free_subnet()
        addr_a, addr_b = (str(h) for h in subnet.hosts())
        dev_a, dev_b = f"tl{tag}a", f"tl{tag}b"
        _ip("link", "add", dev_a, "netns", ns_a, "type", "veth", "peer", "name", dev_b, "netns", ns_b)
        for ns, dev, addr in ((ns_a, dev_a, addr_a), (ns_b, dev_b, addr_b)):
            _ip("-n", ns, "addr", "add", f"{addr}/30", "dev", dev)
            _ip("-n", ns, "link", "set", "lo", "up")
            _ip("-n", ns, "link", "set", dev, "up")
        yield Link(ns_a, ns_b, dev_a, addr_a, addr_b)
    finally:
        for ns in created:  # deleting a namespace deletes its veth end, the pair and the qdisc
            _ip("netns", "delete", ns, check=False)


def _in_ns(ns: str, *args: str) -> list[str]:
    return ["ip", "netns", "exec", ns, sys.executable, str(HELPER), *args]


@pytest.fixture(scope="module")
def endpoint(link: Link) -> Iterator[str]:
    """The data plane server in ``b``; it ends when its stdin closes (and is killed if it does not)."""
    server = subprocess.Popen(_in_ns(link.ns_b, "serve", link.addr_b), stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        with selectors.DefaultSelector() as selector:
            selector.register(server.stdout, selectors.EVENT_READ)
            ready = selector.select(STEP_TIMEOUT_S)
        line = server.stdout.readline().strip() if ready else ""
        if not line.startswith(f"tcp://{link.addr_b}:"):
            server.kill()
            _, err = server.communicate(timeout=STEP_TIMEOUT_S)
            pytest.fail(f"data plane server in {link.ns_b} did not start (printed {line!r}): {err.strip()}")
        yield line
    finally:
        if server.stdin is not None:
            server.stdin.close()
        try:
            server.wait(STEP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(STEP_TIMEOUT_S)


def _probe(link: Link, endpoint: str) -> dict[str, Any]:
    """One deploy-time probe from ``a`` (the helper's LinkMonitor): its LinkReading as a dict."""
    started = time.monotonic()
    done = subprocess.run(_in_ns(link.ns_a, "probe", endpoint, "--timeout", str(STEP_TIMEOUT_S / 2)),
                          capture_output=True, text=True, timeout=STEP_TIMEOUT_S)
    assert done.returncode == 0, f"probe from {link.ns_a} failed after {time.monotonic() - started:.1f}s: " \
                                 f"{done.stderr.strip()}"
    reading: dict[str, Any] = json.loads(done.stdout)
    assert reading["source"] == "probe" and reading["samples"] >= 2, reading
    return reading


@contextlib.contextmanager
def _tbf(link: Link, rate_mbit: float) -> Iterator[None]:
    """``tbf`` on ``a``'s veth end for the duration (skips the test where the kernel lacks it)."""
    rule = ["qdisc", "add", "dev", link.dev_a, "root", "tbf", "rate", f"{rate_mbit:g}mbit",
            "burst", "32kbit", "latency", "400ms"]
    added = subprocess.run(["tc", "-n", link.ns_a, *rule], capture_output=True, text=True,
                           timeout=STEP_TIMEOUT_S)
    if added.returncode != 0:
        pytest.skip(f"tc {' '.join(rule)} failed: {added.stderr.strip()}")
    try:
        yield
    finally:
        subprocess.run(["tc", "-n", link.ns_a, "qdisc", "del", "dev", link.dev_a, "root"],
                       capture_output=True, timeout=STEP_TIMEOUT_S)


def test_an_unlimited_veth_reads_far_above_the_tbf_rate(link: Link, endpoint: str) -> None:
    reading = _probe(link, endpoint)
    assert reading["mbps"] >= UNLIMITED_FACTOR * RATE_MBIT, reading
    assert 0.0 < reading["rtt_ms"] < MAX_RTT_MS, reading


def test_the_probe_measures_a_tbf_bottleneck(link: Link, endpoint: str) -> None:
    with _tbf(link, RATE_MBIT):
        reading = _probe(link, endpoint)
    assert abs(reading["mbps"] - RATE_MBIT) <= TOLERANCE * RATE_MBIT, reading
    assert 0.0 < reading["rtt_ms"] < MAX_RTT_MS, reading
    assert reading["peer"] == "node-b"
